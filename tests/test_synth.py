"""The synthetic event generator: determinism, shape and the planted sequential signal."""

from __future__ import annotations

import csv
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from seqrec.data import synth
from seqrec.data.importers import import_events, import_file
from seqrec.data.schema import events, make_engine
from seqrec.errors import SeqrecError

USERS, ITEMS = 120, 400


@pytest.fixture(scope="module")
def log() -> list:
    return list(synth.generate(USERS, ITEMS, seed=7))


def by_user(evs) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for e in evs:
        out[e.user_id].append(e)
    return out


def test_deterministic_per_seed(log):
    assert list(synth.generate(USERS, ITEMS, seed=7)) == log
    other = list(synth.generate(USERS, ITEMS, seed=8))
    assert other != log
    assert np.array_equal(synth.successors(ITEMS, 7), synth.successors(ITEMS, 7))
    assert not np.array_equal(synth.successors(ITEMS, 7), synth.successors(ITEMS, 8))


def test_shape(log):
    users = by_user(log)
    assert len(users) == USERS
    assert list(users) == sorted(users)  # emitted user by user
    assert all(len(v) >= 5 for v in users.values())
    lengths = [len(v) for v in users.values()]
    assert max(lengths) > 3 * np.median(lengths)  # heavy-tailed
    assert 30 < np.mean(lengths) < 100
    for v in users.values():
        assert all(a.ts_ms < b.ts_ms for a, b in itertools.pairwise(v))
    types = Counter(e.event_type for e in log)
    assert set(types) == {"view", "cart", "purchase"}
    assert types["view"] > types["cart"] > types["purchase"] > 0
    assert all((e.value is not None) == (e.event_type == "purchase") for e in log)
    assert all(e.item_id.startswith("i") and len(e.item_id) == 6 for e in log)
    assert all(e.user_id.startswith("u") and len(e.user_id) == 7 for e in log)
    assert synth.item_id(0, ITEMS) == "i00001" and synth.user_id(122, USERS) == "u000123"


def test_funnel_and_prices(log):
    prices: dict[str, float] = {}
    for v in by_user(log).values():
        for a, b in itertools.pairwise(v):
            if b.event_type == "cart":
                assert a.event_type == "view" and a.item_id == b.item_id
            if b.event_type == "purchase":
                assert a.event_type == "cart" and a.item_id == b.item_id
                assert prices.setdefault(b.item_id, b.value) == b.value  # price fixed per item


def test_sessions(log):
    gaps = np.array(
        [b.ts_ms - a.ts_ms for v in by_user(log).values() for a, b in itertools.pairwise(v)]
    )
    assert np.mean(gaps < 15 * 60_000) > 0.7  # mostly within a session
    assert np.mean(gaps > 3_600_000) > 0.05  # but sessions hours to days apart


def test_successor_structure_is_planted(log):
    succ = synth.successors(ITEMS, 7)
    assert succ.shape == (ITEMS, 3)
    assert not (succ == np.arange(ITEMS)[:, None]).any()
    cat = synth.catalog(ITEMS, 7).category
    assert np.mean(cat[succ] == cat[:, None]) > 0.7  # mostly within the category
    hits = total = 0
    for v in by_user(log).values():
        views = [int(e.item_id[1:]) - 1 for e in v if e.event_type == "view"]
        for a, b in itertools.pairwise(views):
            total += 1
            hits += b in succ[a]
    assert hits / total > 0.5  # chance would be 3 / ITEMS < 0.01


def test_popularity_is_skewed(log):
    counts = sorted(Counter(e.item_id for e in log if e.event_type == "view").values())
    top = sum(counts[-len(counts) // 10 :])
    assert top / sum(counts) > 0.25  # top 10% of items get a large share


def test_bad_sizes():
    with pytest.raises(SeqrecError):
        list(synth.generate(0, 10))
    with pytest.raises(SeqrecError):
        list(synth.generate(5, 1))


def test_write_csv_roundtrip(tmp_path: Path):
    path = tmp_path / "s.csv"
    n = synth.write_csv(path, 20, 50, seed=3)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["user_id", "item_id", "timestamp", "event_type", "value"]
        assert sum(1 for _ in reader) == n
    engine = make_engine(f"sqlite:///{tmp_path}/e.db")
    rep = import_file(engine, path, "csv")
    assert rep.rows_added == n == len(list(synth.generate(20, 50, seed=3)))
    engine.dispose()


def test_synth_import_is_idempotent(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path}/e.db")
    kw = {"source": "synth:users=30,items=60,seed=1", "sha256": "0" * 64, "fmt": "synth"}
    first = import_events(engine, enumerate(synth.generate(30, 60, 1), 1), **kw)
    again = import_events(engine, enumerate(synth.generate(30, 60, 1), 1), **kw)
    assert first.rows_added == first.rows_read > 0
    assert again.rows_added == 0
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(events)).scalar_one() == first.rows_read
    engine.dispose()
