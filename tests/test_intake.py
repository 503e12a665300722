"""The intake check: events since production's training that do not look like the earlier ones
(item ids shuffled) are refused, clean ones pass, and retrain acts on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from seqrec.config import Workspace
from seqrec.data.importers import RawEvent
from seqrec.testing import import_rows, make_workspace

USERS, ITEMS = 240, 80


def _log() -> list[RawEvent]:
    from seqrec.data.synth import generate

    return sorted(generate(USERS, ITEMS, seed=5), key=lambda e: e.ts_ms)


def _shuffled(rows: list[RawEvent], seed: int = 1) -> list[RawEvent]:
    ids = sorted({e.item_id for e in rows})
    perm = dict(zip(ids, np.random.default_rng(seed).permutation(ids).tolist(), strict=True))
    return [dataclasses.replace(e, item_id=perm[e.item_id]) for e in rows]


@pytest.fixture
def split_log(tmp_path: Path) -> tuple[Workspace, int, list[RawEvent]]:
    """A workspace holding the first 70% of a synthetic log; the max event id; the next 15%."""
    from seqrec.data.schema import make_engine
    from seqrec.monitoring.intake import max_event_id

    log = _log()
    a, b = int(0.7 * len(log)), int(0.85 * len(log))
    ws = make_workspace(tmp_path / "ws")
    import_rows(ws, log[:a], "base")
    engine = make_engine(ws.events_url)
    since = max_event_id(engine)
    engine.dispose()
    return ws, since, log[a:b]


def _check(ws: Workspace, since: int, limit: float = 0.5):  # type: ignore[no-untyped-def]
    from seqrec.data.schema import make_engine
    from seqrec.monitoring.intake import check_intake

    engine = make_engine(ws.events_url)
    try:
        return check_intake(engine, since, limit)
    finally:
        engine.dispose()


def test_a_clean_slice_passes_the_intake_check(split_log: tuple) -> None:
    ws, since, new = split_log
    import_rows(ws, new, "clean")
    check = _check(ws, since)
    assert check.new_events == len(new)
    assert check.agreement is not None and check.agreement > 0.8
    assert not check.refused


def test_a_slice_with_shuffled_item_ids_is_refused(split_log: tuple) -> None:
    ws, since, new = split_log
    import_rows(ws, _shuffled(new), "shuffled")
    check = _check(ws, since)
    assert check.agreement is not None and check.agreement < 0.3
    assert check.refused
    assert "refused" in check.describe()


def test_limit_zero_measures_but_never_refuses(split_log: tuple) -> None:
    ws, since, new = split_log
    import_rows(ws, _shuffled(new), "shuffled")
    check = _check(ws, since, limit=0)
    assert check.agreement is not None and check.agreement < 0.3
    assert not check.refused


def test_new_items_are_not_counted_as_corruption(split_log: tuple) -> None:
    """A catalogue launch: most new events are on items never seen before."""
    ws, since, new = split_log
    launch = [dataclasses.replace(e, item_id=f"launch-{i % 40}") for i, e in enumerate(new)]
    import_rows(ws, launch[: int(0.8 * len(launch))] + new[int(0.8 * len(new)) :], "launch")
    check = _check(ws, since, limit=0.5)
    assert check.new_item_share > 0.7
    assert not check.refused


def test_too_few_new_events_are_not_judged(split_log: tuple) -> None:
    ws, since, new = split_log
    import_rows(ws, _shuffled(new[:30]), "few")
    check = _check(ws, since)
    assert check.agreement is None and not check.refused
    assert "skipped" in check.describe()


def _production_on(tmp_path: Path, rows: list[RawEvent]) -> tuple[Workspace, str]:
    """A workspace holding ``rows``, online, with gpt2 (1 epoch) as stage=production."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import promote

    ws = make_workspace(tmp_path / "ws")
    import_rows(ws, rows, "base")
    apply(ws)
    materialize(ws)
    prod = train_model(ws, "gpt2", epochs=1, progress=False).tag
    promote(ws, prod, "stage=production")
    return ws, prod


def test_retrain_rejects_a_candidate_trained_on_shuffled_ids(tmp_path: Path) -> None:
    """Even a run told to promote anything (min_gain -1) does not promote past the check;
    with the check off (0) the same run promotes."""
    from seqrec.promotion import production_tag
    from seqrec.retrain import retrain

    log = _log()
    a, b = int(0.7 * len(log)), int(0.85 * len(log))
    ws, prod = _production_on(tmp_path, log[:a])
    import_rows(ws, _shuffled(log[a:b]), "shuffled")

    rep = retrain(ws, epochs=1, min_gain=-1.0, progress=False)
    assert not rep.promoted
    assert rep.intake is not None and rep.intake["refused"]
    assert "intake check refused" in rep.reason
    assert production_tag(ws, "stage=production") == prod
    from seqrec.runs import get_run

    assert get_run(ws, rep.run_id)["decision"] == "rejected"

    rep2 = retrain(ws, epochs=1, min_gain=-1.0, min_intake_agreement=0, progress=False)
    assert rep2.promoted
    assert production_tag(ws, "stage=production") == rep2.candidate


def test_a_shuffled_import_after_a_clean_one_is_refused_in_its_own_window(
    tmp_path: Path,
) -> None:
    """Clean events, then a shuffled import: judged as one window since production, the clean
    half dilutes the agreement; cut where the earlier run looked, the shuffled window fails."""
    from seqrec.data.schema import make_engine
    from seqrec.monitoring.intake import max_event_id

    log = _log()
    a, b, c = (int(x * len(log)) for x in (0.6, 0.75, 0.9))
    ws = make_workspace(tmp_path / "ws")
    import_rows(ws, log[:a], "base")
    engine = make_engine(ws.events_url)
    since = max_event_id(engine)
    import_rows(ws, log[a:b], "clean")
    cut = max_event_id(engine)
    import_rows(ws, _shuffled(log[b:c]), "shuffled")
    engine.dispose()

    whole = _check(ws, since)
    assert len(whole.windows) == 1

    engine = make_engine(ws.events_url)
    try:
        from seqrec.monitoring.intake import check_intake

        split = check_intake(engine, since, 0.5, cuts=[cut])
    finally:
        engine.dispose()
    assert [(w.after_event_id, w.upto_event_id) for w in split.windows] == [
        (since, cut),
        (cut, max(w.upto_event_id for w in split.windows)),
    ]
    clean, shuffled = split.windows
    assert clean.agreement is not None and clean.agreement > 0.8
    assert shuffled.agreement is not None and shuffled.agreement < 0.3
    assert split.refused and split.agreement == shuffled.agreement
    assert whole.agreement is not None and whole.agreement > split.agreement
    assert f"ids {cut + 1}-" in split.describe()


def test_retrain_refuses_a_shuffled_import_after_a_kept_run_and_keeps_refusing(
    tmp_path: Path,
) -> None:
    """A run that keeps production, then a shuffled import: the next run judges the events
    since the kept run on their own and rejects; a clean import after that does not wash the
    shuffled one out."""
    from seqrec.promotion import production_tag
    from seqrec.retrain import retrain

    log = _log()
    a, b, c = (int(x * len(log)) for x in (0.6, 0.75, 0.9))
    ws, prod = _production_on(tmp_path, log[:a])

    import_rows(ws, log[a:b], "clean")
    kept = retrain(ws, epochs=1, min_gain=1.0, progress=False)  # NDCG cannot gain 1.0
    assert not kept.promoted and kept.intake is not None and not kept.intake["refused"]

    import_rows(ws, _shuffled(log[b:c]), "shuffled")
    rejected = retrain(ws, epochs=1, min_gain=-1.0, progress=False)
    assert not rejected.promoted
    assert rejected.intake is not None and rejected.intake["refused"]
    assert len(rejected.intake["windows"]) == 2
    assert rejected.intake["windows"][0]["after_event_id"] == kept.intake["since_event_id"]
    assert rejected.intake["windows"][1]["after_event_id"] == kept.events_max_id

    import_rows(ws, log[c:], "clean again")
    again = retrain(ws, epochs=1, min_gain=-1.0, progress=False)
    assert not again.promoted and again.intake is not None and again.intake["refused"]
    assert production_tag(ws, "stage=production") == prod
