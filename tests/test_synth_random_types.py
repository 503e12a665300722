"""The random-event-type control of the synthetic generator: types carry no information."""

from __future__ import annotations

import csv
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from seqrec.cli import build_cli
from seqrec.data import synth

USERS, ITEMS = 150, 200


def test_random_types_keep_the_log_and_redraw_only_types() -> None:
    plain = list(synth.generate(USERS, ITEMS, seed=5))
    rand = list(synth.generate(USERS, ITEMS, seed=5, random_event_types=True))
    assert list(synth.generate(USERS, ITEMS, seed=5, random_event_types=True)) == rand
    assert [(e.user_id, e.item_id, e.ts_ms) for e in rand] == [
        (e.user_id, e.item_id, e.ts_ms) for e in plain
    ]
    assert all(e.value is None for e in rand)
    shares = Counter(e.event_type for e in rand)
    for name, p in synth.RANDOM_TYPE_P.items():
        assert abs(shares[name] / len(rand) - p) < 0.02


def test_random_types_are_independent_of_the_previous_event_and_the_funnel() -> None:
    """The next type does not depend on the previous type, nor on the original log's type."""
    plain = list(synth.generate(USERS, ITEMS, seed=6))
    rand = list(synth.generate(USERS, ITEMS, seed=6, random_event_types=True))
    names = list(synth.RANDOM_TYPE_P)
    p = np.array(list(synth.RANDOM_TYPE_P.values()))
    pairs = [(a.event_type, b.event_type) for a, b in pairwise(rand) if a.user_id == b.user_id]
    pairs += [(a.event_type, b.event_type) for a, b in zip(plain, rand, strict=True)]
    for given in names:
        after = Counter(b for a, b in pairs if a == given)
        n = sum(after.values())
        observed = np.array([after[x] for x in names], dtype=float)
        chi2 = float((((observed - n * p) ** 2) / (n * p)).sum())
        assert chi2 < 30, (given, after)  # about 14 at p = 0.001 with 2 degrees of freedom


def test_synth_command_writes_random_types(tmp_path: Path) -> None:
    out = tmp_path / "log.csv"
    args = ["events", "synth", "--users", "20", "--items", "30", "--random-event-types"]
    result = CliRunner().invoke(build_cli(), [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        types = {row["event_type"] for row in csv.DictReader(fh)}
    assert types == set(synth.RANDOM_TYPE_P)
