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


def test_a_kill_point_kills_at_the_nth_pass_and_is_a_no_op_otherwise(
    outcome: Callable[..., None],
) -> None:
    argv = [sys.executable, "-c", PASSES]
    cases = {None: "1 2 3 4 5", "here": "", "here:3": "1 2", "nowhere,other:5": "1 2 3 4"}
    for spec, printed in cases.items():
        proc = run(argv, kill_at=spec)  # asserts a SIGKILL death when spec is set
        assert proc.stdout.split() == printed.split(), spec
    outcome(
        "kill point hook (SEQREC_KILL_AT=name[:n], comma-separated)",
        "process killed",
        cases=len(cases),
        result="SIGKILL at exactly the n-th pass of the named point; a no-op when unset",
        data_lost="none",
    )
