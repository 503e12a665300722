"""SIGKILL inside `seqrec retrain`'s steps: exactly one production model, which loads, and the
run history shows the killed run as crashed; the next run completes.

(tests/test_retrain_crash.py kills retrain as each step begins; these kill it in the middle of
one: while the candidate trains, and between the promotion's commit and the BentoML labels that
mirror it. A kill during the candidate's save is the model-store scenario,
test_kill_model_store.py.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from invariants import (
    crashed_run_problems,
    new_events,
    production_problems,
    run,
    seqrec,
    store_problems,
)

from seqrec.config import Workspace


@pytest.fixture
def prod(ws: Workspace) -> tuple[Workspace, str]:
    """An lstm model trained (1 epoch), online and promoted to production; then new events."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import promote
    from seqrec.testing import load_synth

    load_synth(ws, users=60, items=40)
    apply(ws)
    materialize(ws)
    tag = train_model(ws, "lstm", epochs=1, seed=0, progress=False).tag
    promote(ws, tag, reason="test setup")
    return ws, tag


def _retrain(ws: Workspace, *more: str, kill_at: str | None = None) -> dict[str, Any]:
    # min-gain -1: any candidate wins, so a completed run promotes
    args = ["retrain", "-p", str(ws.root), "--epochs", "1", "--min-gain", "-1", "--json", *more]
    proc = seqrec(*args, kill_at=kill_at, plugins="lstm")
    return {} if kill_at else dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _newest_run(ws: Workspace) -> dict[str, Any]:
    from seqrec.runs import list_runs

    return max((r for r in list_runs(ws) if r["kind"] == "retrain"), key=lambda r: r["id"])


def test_sigkill_during_retrain_keeps_one_loadable_production_model(
    prod: tuple[Workspace, str], outcome: Callable[..., None]
) -> None:
    from seqrec.promotion import production_tag

    ws, production = prod
    new_events(ws, 20, "more")
    _retrain(ws, kill_at="train.batch:2")  # the candidate half trained
    assert production_tag(ws) == production
    assert production_problems(ws) == []
    assert store_problems(ws.model_store) == []
    assert crashed_run_problems(ws, _newest_run(ws)["id"], "train") == []
    done = _retrain(ws)
    assert done["promoted"] and done["production"] == production
    assert production_tag(ws) == done["candidate"] and production_problems(ws) == []
    outcome(
        "SIGKILL during retrain",
        "process killed",
        cases=1,
        result="killed while the candidate trained: production kept and loadable, run shown "
        "crashed; the next run promoted its candidate",
        data_lost="none",
    )


def test_sigkill_during_promotion_then_rerun_leaves_exactly_one_production_model(
    prod: tuple[Workspace, str], outcome: Callable[..., None]
) -> None:
    from seqrec.promotion import production_tag

    ws, before = prod
    new_events(ws, 20, "more")
    _retrain(ws, kill_at="promote.mirror")
    run = _newest_run(ws)
    assert crashed_run_problems(ws, run["id"], "promote") == []
    # the pointer moved in one committed transaction: the candidate is production
    assert production_tag(ws) == run["candidate_tag"] != before
    assert run["decision"] == "promoted"
    # the next retrain keeps production (no candidate is good enough): the BentoML labels the
    # killed run never mirrored must still agree with the pointer afterwards
    kept = _retrain(ws, "--min-gain", "1000")
    assert not kept["promoted"] and kept["production"] == run["candidate_tag"]
    assert production_problems(ws) == []
    outcome(
        "SIGKILL during promotion",
        "process killed",
        cases=1,
        result="killed between the pointer's commit and the label mirror: the candidate is "
        "production; the next run (production kept) repaired the labels",
        data_lost="none",
    )


#: a retrain run recorded, then killed as it begins its training step
RUN_KILLED_IN_TRAIN = """
import sys
from seqrec.config import load_workspace
from seqrec.runs import begin_step, start_run

ws = load_workspace(sys.argv[1])
run_id = start_run(ws, "retrain")
print(run_id, flush=True)
begin_step(ws, run_id, "train")
"""


def test_the_run_check_catches_a_history_that_never_notices_a_dead_process(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, outcome: Callable[..., None]
) -> None:
    """A run history whose liveness test always says "running": the killed run stays
    running forever (and its lock and checkpoints with it)."""
    from seqrec import runs

    proc = run([sys.executable, "-c", RUN_KILLED_IN_TRAIN, str(ws.root)], kill_at="train")
    run_id = int(proc.stdout.split()[0])
    with monkeypatch.context() as m:
        m.setattr(runs, "process_alive", lambda host, pid: True)
        problems = crashed_run_problems(ws, run_id, "train")
    assert problems == [f"run {run_id} is running at step train, not crashed at train"]
    assert crashed_run_problems(ws, run_id, "train") == []  # the real history sees it
    outcome(
        "broken variant: run history that never notices a killed run",
        "process killed",
        cases=1,
        result=f"the run check catches it ({problems[0]})",
        data_lost="none",
    )


#: ``promote(ws, tag)``, in a process of its own
PROMOTE = """
import sys
from seqrec.config import load_workspace
from seqrec.promotion import promote

promote(load_workspace(sys.argv[1]), sys.argv[2], reason="test")
"""


def test_the_production_check_catches_a_next_run_that_never_repairs_the_labels(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, outcome: Callable[..., None]
) -> None:
    """A promotion killed between the pointer's commit and the label mirror, then a retrain
    without its label repair: the pointer and the BentoML labels name two models."""
    from seqrec import promotion
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.retrain import retrain
    from seqrec.testing import load_synth

    load_synth(ws, users=40, items=20)
    apply(ws)
    first = train_model(ws, "popularity", progress=False).tag
    promotion.promote(ws, first, reason="test setup")
    second = train_model(ws, "popularity", progress=False).tag
    run([sys.executable, "-c", PROMOTE, str(ws.root), second], kill_at="promote.mirror")
    monkeypatch.setattr(promotion, "repair_labels", lambda ws, selector="": False)
    kept = retrain(ws, model_name="popularity", min_gain=1000, materialize=False, progress=False)
    assert not kept.promoted
    problems = production_problems(ws)
    assert problems == [
        f"the pointer names {second} but the models labelled stage=production are [{first!r}]"
    ], problems
    outcome(
        "broken variant: next retrain without the label repair, after a promotion killed "
        "before its label mirror",
        "process killed",
        cases=1,
        result="the production check catches it (the pointer and the labels name two models)",
        data_lost="none",
    )
