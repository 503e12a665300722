"""The intake check of ``seqrec retrain``: do the events that arrived since production was
trained look like the events it was trained on?

A retrain compares candidate and production on each user's newest event. When the new events
are garbage (item ids shuffled or re-keyed by a broken upstream export, a join on the wrong
column) that comparison is on garbage too, and a candidate fitted to it can win. The check looks
at the data instead of the models. "New" is by import: events whose id is above the newest one
production saw (stored with the model as ``events_max_id``).

**Transition agreement** decides. Of the new events' item-to-item transitions (a user's
previous item, then this one; both items known before, repeats left out), the share that was
already seen as a transition in the earlier events; divided by the same share measured on the
earlier events themselves (their newest 10% against the rest), so that a log with little
sequential structure is not held to the standard of one with much. Clean data scores about 1;
data whose ids no longer mean what they meant scores near 0. Below ``min_agreement`` (default
0.5) the run refuses to promote. Measured on time-sliced replays (bench/retrain.py and the
tests): clean 10% slices 0.98-1.16 on the synthetic log, ml-100k and small synthetic logs;
the same slices with item ids shuffled 0.01-0.24.

**Windows.** The new events are judged import window by import window: earlier retrain runs
that found production in place (kept, rejected or not promoted) recorded the newest event id
they saw, and those ids cut the new events into the windows each run looked at. Each window is
judged against everything before it, and the check refuses when any window fails. One
corrupted import is then refused however many clean events arrived since production's
training, and it is still refused by the runs after it, until it is removed or the check is
overridden. A window with too few transitions to judge joins the next one.

**Item-popularity PSI** is reported beside it (shares over the popularity deciles of the
earlier events, items never seen before left out): it flags a shift, but a real shift of the
audience moves it too (0.58 on a clean slice of a 160-user log), so it does not refuse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

#: transition agreement (new / earlier) below which the new events are refused
DEFAULT_MIN_AGREEMENT = 0.5
#: fewer new transitions between known items than this: too few to judge, nothing refused
MIN_TRANSITIONS = 100
#: the share of the earlier events that the agreement baseline holds out
BASELINE_SHARE = 0.1
N_BINS = 10


@dataclass
class IntakeWindow:
    """One window of new events, judged against every event before it."""

    after_event_id: int  # the window holds the events with ids in (after, upto]
    upto_event_id: int
    events: int
    transitions: int  # its transitions between items known before it
    agreement_new: float | None  # share of them seen before
    agreement: float | None  # agreement_new / the baseline; None: too few to judge


@dataclass
class IntakeCheck:
    """What the check saw and decided. The headline agreement is the worst window's."""

    since_event_id: int
    new_events: int
    new_item_share: float  # of the new events, the share on items never seen before
    new_transitions: int  # new transitions between known items (what agreement is over)
    agreement_new: float | None  # share of them seen before (in the worst window)
    agreement_baseline: float | None  # the same share within the earlier events
    agreement: float | None  # new / baseline of the worst window; None: too few to judge
    popularity_psi: float | None
    min_agreement: float
    refused: bool
    windows: list[IntakeWindow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst(self) -> IntakeWindow | None:
        """The judged window with the lowest agreement (None: none could be judged)."""
        judged = [w for w in self.windows if w.agreement is not None]
        return min(judged, key=lambda w: w.agreement or 0.0) if judged else None

    def describe(self) -> str:
        worst = self.worst()
        if self.agreement is None or worst is None:
            return (
                f"intake check skipped: {self.new_transitions} new transitions between known "
                f"items (needs {MIN_TRANSITIONS})"
            )
        verdict = "refused" if self.refused else "ok"
        psi = "-" if self.popularity_psi is None else f"{self.popularity_psi:.2f}"
        where = f"of the {self.new_events:,} events since production's training"
        if len(self.windows) > 1:
            where = (
                f"of the {worst.events:,} events with ids {worst.after_event_id + 1}-"
                f"{worst.upto_event_id} (the worst of {len(self.windows)} windows since "
                f"production's training, {self.new_events:,} events)"
            )
        return (
            f"intake check {verdict}: {where}, {self.agreement_new:.0%} of the item-to-item "
            f"transitions were seen before (the earlier events: {self.agreement_baseline:.0%}), "
            f"agreement {self.agreement:.2f} (min {self.min_agreement:g}); "
            f"item-popularity PSI {psi}"
        )


def max_event_id(engine: Engine) -> int:
    """The newest event id in the events table (0 when empty)."""
    from seqrec.data.schema import events

    with engine.connect() as conn:
        return int(conn.execute(select(func.max(events.c.event_id))).scalar() or 0)


def _stream(engine: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user code, item index, event id) of every event, by user, then time, then id."""
    from seqrec.data.schema import events

    q = select(events.c.user_id, events.c.item_idx, events.c.event_id).order_by(
        events.c.user_id, events.c.ts_ms, events.c.event_id
    )
    users: list[str] = []
    items: list[int] = []
    ids: list[int] = []
    with engine.connect() as conn:
        for u, i, e in conn.execute(q):
            users.append(u)
            items.append(i)
            ids.append(e)
    _, user_code = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    return user_code.astype(np.int64), np.asarray(items, np.int64), np.asarray(ids, np.int64)


def _agreement(
    prev: np.ndarray, cur: np.ndarray, second_id: np.ndarray, item_first_id: np.ndarray,
    cut: int, upto: int,
) -> tuple[int, float | None]:  # fmt: skip
    """Of the transitions whose second event has an id in (cut, upto], between items first
    seen at or before ``cut``: how many, and the share also seen among transitions whose
    second event is at or before ``cut``."""
    n = int(item_first_id.shape[0])
    codes = prev * n + cur
    seen = np.unique(codes[second_id <= cut])
    known = (item_first_id[prev] <= cut) & (item_first_id[cur] <= cut)
    mask = (second_id > cut) & (second_id <= upto) & known
    if not mask.any():
        return 0, None
    return int(mask.sum()), float(np.isin(codes[mask], seen).mean())


def _popularity_psi(items: np.ndarray, ids: np.ndarray, since: int) -> float | None:
    from seqrec.monitoring.drift import psi

    n = int(items.max(initial=0)) + 1
    ref = np.bincount(items[ids <= since], minlength=n)
    new = np.bincount(items[ids > since], minlength=n)
    seen = np.flatnonzero(ref > 0)
    if not len(seen) or not new[seen].sum():
        return None
    order = seen[np.argsort(-ref[seen], kind="stable")]
    mass = np.cumsum(ref[order]) / ref.sum()
    decile = np.minimum(N_BINS - 1, (mass * N_BINS - 1e-9).astype(np.int64))
    ref_hist = np.bincount(decile, weights=ref[order], minlength=N_BINS)
    new_hist = np.bincount(decile, weights=new[order], minlength=N_BINS)
    return round(float(psi(ref_hist, new_hist)), 4)


def check_intake(
    engine: Engine,
    since_event_id: int,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_transitions: int = MIN_TRANSITIONS,
    cuts: Iterable[int] = (),
) -> IntakeCheck:
    """Judge the events after ``since_event_id`` against those up to it (see the module doc);
    ``cuts``: event ids after it that split the new events into windows judged one by one.
    ``min_agreement`` <= 0 turns refusal off (everything is still measured)."""
    users, items, ids = _stream(engine)
    since = int(since_event_id)
    n_items = int(items.max(initial=0)) + 1
    first_id = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_id, items, ids)
    new = ids > since
    n_new = int(new.sum())
    new_item_share = float((first_id[items[new]] > since).mean()) if n_new else 0.0
    # transitions: consecutive events of one user, repeats of the same item left out
    same_user = users[1:] == users[:-1]
    step = same_user & (items[1:] != items[:-1])
    prev, cur, second = items[:-1][step], items[1:][step], ids[1:][step]
    earlier = np.sort(ids[~new])
    a_base = None
    if len(earlier):
        base_cut = int(earlier[int((1 - BASELINE_SHARE) * (len(earlier) - 1))])
        _, a_base = _agreement(prev, cur, second, first_id, base_cut, since)
    newest = int(ids.max(initial=since))
    edges = [*sorted({int(c) for c in cuts if since < int(c) < newest}), max(newest, since)]
    windows: list[IntakeWindow] = []
    start = since
    for end in edges:
        n, a_new = _agreement(prev, cur, second, first_id, start, end)
        if n < min_transitions and end != edges[-1]:
            continue  # too few to judge alone: the window runs on into the next one
        judged = n >= min_transitions and a_new is not None and bool(a_base)
        n_events = int(((ids > start) & (ids <= end)).sum())
        windows.append(
            IntakeWindow(
                after_event_id=start,
                upto_event_id=end,
                events=n_events,
                transitions=n,
                agreement_new=None if a_new is None else round(a_new, 4),
                agreement=round(a_new / a_base, 4)
                if judged and a_new is not None and a_base
                else None,
            )
        )
        start = end
    check = IntakeCheck(
        since_event_id=since,
        new_events=n_new,
        new_item_share=round(new_item_share, 4),
        new_transitions=sum(w.transitions for w in windows),
        agreement_new=None,
        agreement_baseline=None if a_base is None else round(a_base, 4),
        agreement=None,
        popularity_psi=_popularity_psi(items, ids, since),
        min_agreement=min_agreement,
        refused=False,
        windows=windows,
    )
    worst = check.worst()
    if worst is not None:
        check.agreement, check.agreement_new = worst.agreement, worst.agreement_new
        check.refused = bool(min_agreement > 0 and (worst.agreement or 0.0) < min_agreement)
    elif len(windows) == 1:
        check.agreement_new = windows[0].agreement_new
    return check
