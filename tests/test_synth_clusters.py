"""The ``markov-clusters`` synthetic log: determinism, the planted chain and the user clusters."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seqrec.data import synth, synth_clusters
from seqrec.data.importers import RawEvent
from seqrec.errors import SeqrecError

USERS, ITEMS, SEED = 150, 400, 5


@pytest.fixture(scope="module")
def log() -> list[RawEvent]:
    return list(synth.generate(USERS, ITEMS, SEED, kind="markov-clusters"))


def views_by_user(log: list[RawEvent]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for e in log:
        out[e.user_id].append(int(e.item_id[1:]) - 1)
    return out


def test_markov_clusters_is_deterministic_per_seed(log: list[RawEvent]) -> None:
    assert list(synth.generate(USERS, ITEMS, SEED, kind="markov-clusters")) == log
    assert list(synth.generate(USERS, ITEMS, SEED + 1, kind="markov-clusters")) != log
    assert log != list(synth.generate(USERS, ITEMS, SEED))  # not the default log


def test_markov_clusters_shape(log: list[RawEvent]) -> None:
    users: dict[str, list[RawEvent]] = defaultdict(list)
    for e in log:
        users[e.user_id].append(e)
    assert len(users) == USERS and list(users) == sorted(users)
    assert all(len(v) >= 5 for v in users.values())
    assert 30 < len(log) / USERS < 100
    assert {e.event_type for e in log} == {"view"} and all(e.value is None for e in log)
    for v in users.values():
        assert all(a.ts_ms < b.ts_ms for a, b in itertools.pairwise(v))


def test_chain_successor_is_each_items_most_frequent_next_item(log: list[RawEvent]) -> None:
    world = synth_clusters.cluster_world(ITEMS, SEED)
    nxt: dict[int, Counter[int]] = defaultdict(Counter)
    for views in views_by_user(log).values():
        for a, b in itertools.pairwise(views):
            nxt[a][b] += 1
    total = sum(sum(c.values()) for c in nxt.values())
    chain = sum(c[world.successor[a]] for a, c in nxt.items())
    assert chain / total > 0.55  # P_CHAIN = 0.6 (+ jumps that land there); chance is 1 / 400
    often = [a for a, c in nxt.items() if sum(c.values()) >= 20]
    assert len(often) > 50
    top = [nxt[a].most_common(1)[0][0] == world.successor[a] for a in often]
    assert np.mean(top) > 0.95


def test_users_views_stay_in_their_interest_clusters(log: list[RawEvent]) -> None:
    world = synth_clusters.cluster_world(ITEMS, SEED)
    n_clusters = len(world.members)
    assert n_clusters == 20
    per_user = [set(world.cluster[v].tolist()) for v in views_by_user(log).values()]
    assert all(1 <= len(c) <= synth_clusters.MAX_INTERESTS for c in per_user)
    assert {len(c) for c in per_user} == {1, 2, 3}
    # chain successors stay in their cluster, every item is in exactly one cluster
    assert np.array_equal(world.cluster[world.successor], world.cluster)
    assert sorted(np.concatenate(world.members).tolist()) == list(range(ITEMS))


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(SeqrecError, match="unknown synthetic log kind 'zipf'"):
        list(synth.generate(5, 10, kind="zipf"))


def test_events_synth_kind_option_writes_the_log(tmp_path: Path) -> None:
    from seqrec.cli import build_cli

    out = tmp_path / "log.csv"
    args = ["events", "synth", "--users", "7", "--items", "30", "--kind", "markov-clusters"]
    result = CliRunner().invoke(build_cli(), [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == len(
        list(synth.generate(7, 30, 0, kind="markov-clusters"))
    )
    cmd = build_cli().commands["events"].commands["synth"]  # type: ignore[attr-defined]
    kind = next(p for p in cmd.params if p.name == "kind")
    assert tuple(kind.type.choices) == synth.KINDS  # the CLI offers exactly the generator's kinds
