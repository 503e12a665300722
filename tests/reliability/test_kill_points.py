"""The kill-point hook itself (seqrec.faults): a real SIGKILL at exactly the pass asked for."""

from __future__ import annotations

import sys
from collections.abc import Callable

from invariants import run

#: passes through two kill points, printing the pass number after each
PASSES = """
from seqrec.faults import kill_point
for i in range(1, 6):
    kill_point("other")
    kill_point("here")
    print(i, flush=True)
"""
#: SEQREC_KILL_AT -> the passes printed before the kill (all five: no kill)
CASES = {None: "1 2 3 4 5", "here": "", "here:3": "1 2", "nowhere,other:5": "1 2 3 4"}


def kill_point_problems(script: str) -> list[str]:
    """Run ``script`` under each of :data:`CASES` (asserting a SIGKILL death when one is
    set); the cases whose passes printed differ from what the hook promises."""
    problems = []
    for spec, printed in CASES.items():
        proc = run([sys.executable, "-c", script], kill_at=spec)
        if proc.stdout.split() != printed.split():
            problems.append(f"{spec}: printed {proc.stdout.split()}, expected {printed.split()}")
    return problems


def test_a_kill_point_kills_at_the_nth_pass_and_is_a_no_op_otherwise(
    outcome: Callable[..., None],
) -> None:
    assert kill_point_problems(PASSES) == []
    outcome(
        "kill point hook (SEQREC_KILL_AT=name[:n], comma-separated)",
        "process killed",
        cases=len(CASES),
        result="SIGKILL at exactly the n-th pass of the named point; a no-op when unset",
        data_lost="none",
    )


#: a hook that ignores the pass count: it kills at the first pass of any point named
BROKEN_HOOK = """
import os, signal
NAMES = {e.split(":")[0] for e in os.environ.get("SEQREC_KILL_AT", "").split(",") if e}

def kill_point(name):
    if name in NAMES:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_kill_point_check_catches_a_hook_that_ignores_the_pass_count(
    outcome: Callable[..., None],
) -> None:
    broken = PASSES.replace("from seqrec.faults import kill_point", BROKEN_HOOK)
    problems = kill_point_problems(broken)
    assert [p.split(":")[0] for p in problems] == ["here", "nowhere,other"], problems
    outcome(
        "broken variant: kill point hook that ignores the pass count",
        "process killed",
        cases=len(CASES),
        result=f"the kill point check catches it ({problems[0]})",
        data_lost="none",
    )
