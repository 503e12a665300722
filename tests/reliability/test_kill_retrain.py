"""SIGKILL inside `seqrec retrain`'s steps: exactly one production model, which loads, and the
run history shows the killed run as crashed; the next run completes.

(tests/test_retrain_crash.py kills retrain as each step begins; these kill it in the middle of
one: while the candidate trains, and between the promotion's commit and the BentoML labels that
mirror it. A kill during the candidate's save is the model-store scenario,
test_kill_model_store.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from invariants import (
    crashed_run_problems,
    new_events,
    production_problems,
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
