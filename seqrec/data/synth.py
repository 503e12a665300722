"""A synthetic behaviour log with known sequential structure.

The log is realistic enough to exercise the whole pipeline and, more importantly, has a signal
that a sequence model can learn and a popularity model cannot:

* items fall into about ``sqrt(items)`` categories of varied size; item popularity is Zipf-like
  across and within categories;
* every item has 3 *successors* (mostly in its own category, see :func:`successors`): with
  probability :data:`P_SUCCESSOR` a user's next view is a successor of the previous view (a
  first-order Markov signal); otherwise it is drawn by popularity from the user's current
  interest category, which drifts to a new category with probability :data:`P_DRIFT` per session;
* events come in sessions (seconds to minutes apart) separated by hours to days; views per user
  are heavy-tailed (log-normal, at least 5);
* funnel: a view is followed by a cart of the same item with probability :data:`P_CART`, a cart
  by a purchase with probability :data:`P_PURCHASE`; purchases carry the item's price as value.

``kind="markov-clusters"`` generates a simpler log instead: a first-order item chain mixed with
per-user interest clusters (:mod:`seqrec.data.synth_clusters`).

``random_event_types=True`` (either kind) is a control for classification: every event's type
is redrawn independently of everything (user, item, time, history) from
:data:`RANDOM_TYPE_P`, and no event carries a value, so ``next-event-type`` labels are pure
noise (no model can beat chance). ``purchase-within`` labels are not: how many events a user
has in the horizon still depends on the user.

Ids are strings ``u000001`` and ``i00001`` (1-based). Timestamps are epoch milliseconds, strictly
increasing per user; events are emitted user by user. Everything is determined by the seed.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.importers import ImportReport, RawEvent
from seqrec.errors import SeqrecError

N_SUCCESSORS = 3
P_SUCCESSOR = 0.6
P_SUCCESSOR_SAME_CATEGORY = 0.85
P_DRIFT = 0.05
P_CART = 0.10
P_PURCHASE = 0.40
MEAN_SESSION_LEN = 8.0
DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
#: the logs :func:`generate` can make: this module's world, or :mod:`seqrec.data.synth_clusters`
KINDS = ("default", "markov-clusters")
START_SPREAD_MS = 30 * 86_400_000  # users start within 30 days of ``start``
#: event-type probabilities of ``random_event_types`` (every class common enough to evaluate)
RANDOM_TYPE_P = {"view": 0.6, "cart": 0.25, "purchase": 0.15}


@dataclass(frozen=True)
class Catalog:
    """The item side of the synthetic world (0-based item indices)."""

    category: np.ndarray  # (items,) category of each item
    popularity: np.ndarray  # (items,) probabilities, sum 1
    successors: np.ndarray  # (items, 3) successor item indices
    price: np.ndarray  # (items,) price, 2 decimals
    cat_items: list[list[int]]  # per category: its items, most popular first
    cat_cdf: list[list[float]]  # per category: cumulative popularity (normalised to 1)
    cat_weight: np.ndarray  # (categories,) probability of a category as interest


def _check_sizes(users: int, items: int) -> None:
    if users < 1:
        raise SeqrecError(f"--users must be at least 1, got {users}")
    if items < 2:
        raise SeqrecError(f"--items must be at least 2, got {items}")


@lru_cache(maxsize=4)
def catalog(items: int, seed: int = 0) -> Catalog:
    """Categories, popularity, successors and prices for ``items`` items (deterministic)."""
    rng = np.random.default_rng([seed, 1])
    n_cat = max(1, round(math.sqrt(items)))
    # Category sizes vary (Zipf-ish shares); every category gets at least one item.
    share = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    share = rng.permutation(share / share.sum())
    category = np.concatenate([np.arange(n_cat), rng.choice(n_cat, size=items - n_cat, p=share)])
    category = rng.permutation(category)
    # Zipf popularity over a random ranking of all items.
    rank = rng.permutation(items)
    popularity = 1.0 / (rank + 1.0)
    popularity /= popularity.sum()

    order = np.lexsort((-popularity, category))  # by category, most popular first
    sizes = np.bincount(category, minlength=n_cat)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cat_items: list[list[int]] = []
    cat_cdf: list[list[float]] = []
    for c in range(n_cat):
        members = order[offsets[c] : offsets[c] + sizes[c]]
        cdf = np.cumsum(popularity[members])
        cat_items.append(members.tolist())
        cat_cdf.append((cdf / cdf[-1]).tolist())
    cat_weight = np.bincount(category, weights=popularity, minlength=n_cat) ** 0.5
    cat_weight /= cat_weight.sum()

    # Successors: mostly uniform within the category (so popularity does not explain them),
    # sometimes any item by popularity; never the item itself, no repeats. Candidates are drawn
    # vectorised; the rare item without 3 distinct candidates falls back to uniform draws.
    n_cand = 4 * N_SUCCESSORS
    size = sizes[category][:, None]
    same = order[offsets[category][:, None] + (rng.random((items, n_cand)) * size).astype(np.int64)]
    pop_cdf = np.cumsum(popularity)
    anywhere = np.searchsorted(pop_cdf / pop_cdf[-1], rng.random((items, n_cand)), side="right")
    anywhere = anywhere.clip(0, items - 1)
    use_same = (rng.random((items, n_cand)) < P_SUCCESSOR_SAME_CATEGORY) & (size > 1)
    cand = np.where(use_same, same, anywhere).tolist()
    succ = np.empty((items, N_SUCCESSORS), dtype=np.int64)
    for i in range(items):
        chosen: list[int] = []
        for j in cand[i]:
            if j != i and j not in chosen:
                chosen.append(j)
                if len(chosen) == N_SUCCESSORS:
                    break
        while len(chosen) < N_SUCCESSORS:
            j = int(rng.integers(items))
            if j != i and (j not in chosen or items <= N_SUCCESSORS):
                chosen.append(j)
        succ[i] = chosen
    price = np.round(np.exp(rng.normal(3.0, 1.0, size=items)).clip(0.99, 2000.0), 2)
    return Catalog(category, popularity, succ, price, cat_items, cat_cdf, cat_weight)


def successors(items: int, seed: int = 0) -> np.ndarray:
    """The ``(items, 3)`` successor table (0-based item indices) used by :func:`generate`."""
    _check_sizes(1, items)
    return catalog(items, seed).successors.copy()


def user_id(u: int, users: int) -> str:
    """The id of 0-based user ``u``: ``u000001`` for ``u == 0``."""
    return f"u{u + 1:0{max(6, len(str(users)))}d}"


def item_id(i: int, items: int) -> str:
    """The id of 0-based item ``i``: ``i00001`` for ``i == 0``."""
    return f"i{i + 1:0{max(5, len(str(items)))}d}"


def generate(
    users: int,
    items: int,
    seed: int = 0,
    *,
    start: datetime = DEFAULT_START,
    mean_events_per_user: int = 60,
    kind: str = "default",
    random_event_types: bool = False,
) -> Iterator[RawEvent]:
    """Yield a synthetic event log, user by user, deterministic for ``seed``; ``kind`` is one
    of :data:`KINDS`; ``random_event_types``: types drawn independently of everything."""
    if random_event_types:
        log = generate(
            users, items, seed, start=start, mean_events_per_user=mean_events_per_user, kind=kind
        )
        yield from _random_types(log, seed)
        return
    _check_sizes(users, items)
    if mean_events_per_user < 5:
        raise SeqrecError(f"mean_events_per_user must be at least 5, got {mean_events_per_user}")
    if kind not in KINDS:
        raise SeqrecError(f"unknown synthetic log kind '{kind}'", hint=f"choose one of {KINDS}")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start_ms = int(start.timestamp() * 1000)
    if kind == "markov-clusters":
        from seqrec.data import synth_clusters

        yield from synth_clusters.generate(users, items, seed, start_ms, mean_events_per_user)
        return
    cat = catalog(items, seed)
    succ = cat.successors.tolist()
    category = cat.category.tolist()
    price = cat.price.tolist()
    ids = [item_id(i, items) for i in range(items)]
    n_cat = len(cat.cat_items)
    cat_cdf_all = np.cumsum(cat.cat_weight)
    cat_cdf_all /= cat_cdf_all[-1]

    rng = np.random.default_rng([seed, 2])
    # Views per user: log-normal, mean about mean_events_per_user / (1 + funnel events).
    funnel = 1.0 + P_CART + P_CART * P_PURCHASE
    sigma = 1.0
    mu = math.log(mean_events_per_user / funnel) - sigma**2 / 2
    n_views = np.clip(
        np.round(rng.lognormal(mu, sigma, size=users)), 5, max(5, 10 * mean_events_per_user)
    ).astype(np.int64)
    user_start = start_ms + rng.integers(0, START_SPREAD_MS, size=users)
    # Buying propensity per user (mean 1): some users cart and buy far more than others, so a
    # user's history predicts future purchases (the signal purchase-propensity models learn).
    propensity = rng.gamma(2.0, 0.5, size=users)
    p_cart = np.minimum(0.6, P_CART * propensity).tolist()
    p_buy = np.minimum(0.9, P_PURCHASE * propensity).tolist()

    for u in range(users):
        n = int(n_views[u])
        uid = user_id(u, users)
        # Per-view random draws, vectorised.
        new_session = rng.random(n) < 1.0 / MEAN_SESSION_LEN
        drift = rng.random(n) < P_DRIFT
        follow = (rng.random(n) < P_SUCCESSOR).tolist()
        which = rng.integers(0, N_SUCCESSORS, size=n).tolist()
        pick = rng.random(n).tolist()
        cat_pick = np.searchsorted(cat_cdf_all, rng.random(n), side="right").clip(0, n_cat - 1)
        cat_pick = cat_pick.tolist()
        # Gaps before each view: within a session 2 s .. ~10 min (log-uniform), between
        # sessions 1 h .. 5 days (log-uniform).
        in_gap = np.exp(rng.uniform(math.log(2_000), math.log(600_000), size=n))
        out_gap = np.exp(rng.uniform(math.log(3_600_000), math.log(5 * 86_400_000), size=n))
        gap = np.where(new_session, out_gap, in_gap).astype(np.int64).tolist()
        cart = (rng.random(n) < p_cart[u]).tolist()
        buy = (rng.random(n) < p_buy[u]).tolist()
        cart_gap = rng.integers(5_000, 120_000, size=n).tolist()
        buy_gap = rng.integers(10_000, 600_000, size=n).tolist()
        new_session_l = new_session.tolist()
        drift_l = drift.tolist()

        interest = cat_pick[0]
        ts = int(user_start[u])
        prev = -1
        for k in range(n):
            if k > 0:
                ts += gap[k]
                if new_session_l[k] and drift_l[k]:
                    interest = cat_pick[k]
            if prev >= 0 and follow[k]:
                cur = succ[prev][which[k]]
            else:
                members = cat.cat_items[interest]
                j = bisect.bisect_left(cat.cat_cdf[interest], pick[k])
                cur = members[min(j, len(members) - 1)]
            iid = ids[cur]
            yield RawEvent(uid, iid, ts, "view", None)
            if cart[k]:
                ts += cart_gap[k]
                yield RawEvent(uid, iid, ts, "cart", None)
                if buy[k]:
                    ts += buy_gap[k]
                    yield RawEvent(uid, iid, ts, "purchase", price[cur])
            prev = cur
            # Successors may lead out of the interest category; interest follows the user.
            interest = category[cur] if follow[k] else interest


def _random_types(events: Iterator[RawEvent], seed: int) -> Iterator[RawEvent]:
    """``events`` with each type redrawn from :data:`RANDOM_TYPE_P` and no values."""
    rng = np.random.default_rng([seed, 3])
    names, p = list(RANDOM_TYPE_P), list(RANDOM_TYPE_P.values())
    block: list[int] = []
    for ev in events:
        if not block:
            block = rng.choice(len(names), size=65_536, p=p).tolist()[::-1]
        yield RawEvent(ev.user_id, ev.item_id, ev.ts_ms, names[block.pop()], None)


def write_csv(
    path: str | Path,
    users: int,
    items: int,
    seed: int = 0,
    *,
    start: datetime = DEFAULT_START,
    mean_events_per_user: int = 60,
    kind: str = "default",
    random_event_types: bool = False,
) -> int:
    """Write :func:`generate`'s log as CSV (timestamps in epoch ms); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp", "event_type", "value"])
        for ev in generate(
            users,
            items,
            seed,
            start=start,
            mean_events_per_user=mean_events_per_user,
            kind=kind,
            random_event_types=random_event_types,
        ):
            w.writerow(
                [
                    ev.user_id,
                    ev.item_id,
                    ev.ts_ms,
                    ev.event_type,
                    "" if ev.value is None else f"{ev.value:.2f}",
                ]
            )
            n += 1
    return n


def import_synth(
    engine: Any,
    users: int,
    items: int,
    seed: int = 0,
    *,
    mean_events_per_user: int = 60,
    batch_size: int = 10_000,
    progress: bool = False,
    kind: str = "default",
    random_event_types: bool = False,
) -> ImportReport:
    """Generate a log straight into the events DB; rerunning with the same arguments adds 0."""
    from seqrec.data.importers import import_events
    from seqrec.data.schema import create_schema

    create_schema(engine)
    source = f"synth:users={users},items={items},seed={seed}"
    if mean_events_per_user != 60:
        source += f",mean={mean_events_per_user}"
    if kind != "default":
        source += f",kind={kind}"
    if random_event_types:
        source += ",random_event_types"
    events = generate(
        users,
        items,
        seed,
        mean_events_per_user=mean_events_per_user,
        kind=kind,
        random_event_types=random_event_types,
    )
    return import_events(
        engine,
        enumerate(events, 1),
        source=source,
        sha256=hashlib.sha256(source.encode()).hexdigest(),
        fmt="synth",
        batch_size=batch_size,
        progress=progress,
    )
