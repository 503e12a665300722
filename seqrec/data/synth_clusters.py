"""The ``markov-clusters`` synthetic log: a first-order item chain mixed with user interests.

A simpler world than :mod:`seqrec.data.synth`'s default, with the two signals stated exactly:

* items are split into about ``sqrt(items)`` clusters (random, near-equal sizes); cluster
  popularity is Zipf-like (exponent :data:`CLUSTER_ZIPF`), item popularity within a cluster is
  Zipf (``1 / rank``);
* every item has one *chain successor* in its own cluster: the members of each cluster form one
  random cycle, so the chain never loops early;
* every user has 1-3 interest clusters (drawn by cluster popularity); each next view follows the
  chain from the previous view with probability :data:`P_CHAIN`, otherwise it jumps to an item
  of one of the user's clusters (uniform over them, Zipf within the cluster).

A first-order Markov model can learn the chain, a popularity model cannot, and a model of the
user's whole history can also learn the clusters. Events are views only; sessions and
timestamps follow the default generator. Everything is determined by the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from seqrec.data.importers import RawEvent

P_CHAIN = 0.6
CLUSTER_ZIPF = 0.7
MAX_INTERESTS = 3
MEAN_SESSION_LEN = 8.0


@dataclass(frozen=True)
class ClusterWorld:
    """The item side of the ``markov-clusters`` world (0-based item indices)."""

    cluster: np.ndarray  # (items,) cluster of each item
    successor: np.ndarray  # (items,) chain successor (same cluster; itself in a cluster of one)
    members: list[np.ndarray]  # per cluster: its items, most popular first
    member_cdf: list[np.ndarray]  # per cluster: cumulative Zipf popularity (normalised to 1)
    cluster_p: np.ndarray  # (clusters,) probability of a cluster as an interest


@lru_cache(maxsize=4)
def cluster_world(items: int, seed: int = 0) -> ClusterWorld:
    """Clusters, chain successors and popularity for ``items`` items (deterministic)."""
    rng = np.random.default_rng([seed, 11])
    n_clusters = max(1, round(math.sqrt(items)))
    order = rng.permutation(items)
    members = [np.asarray(m) for m in np.array_split(order, n_clusters)]  # by popularity rank
    cluster = np.empty(items, dtype=np.int64)
    successor = np.empty(items, dtype=np.int64)
    member_cdf = []
    for c, m in enumerate(members):
        cluster[m] = c
        cycle = rng.permutation(m)
        successor[cycle] = np.roll(cycle, -1)
        cdf = np.cumsum(1.0 / np.arange(1, len(m) + 1))
        member_cdf.append(cdf / cdf[-1])
    cluster_p = rng.permutation(1.0 / np.arange(1, n_clusters + 1) ** CLUSTER_ZIPF)
    return ClusterWorld(cluster, successor, members, member_cdf, cluster_p / cluster_p.sum())


def generate(
    users: int, items: int, seed: int, start_ms: int, mean_events_per_user: int
) -> Iterator[RawEvent]:
    """Yield the log user by user (views only; ids and timestamps as the default generator)."""
    from seqrec.data.synth import START_SPREAD_MS, item_id, user_id

    world = cluster_world(items, seed)
    n_clusters = len(world.members)
    ids = [item_id(i, items) for i in range(items)]
    succ = world.successor.tolist()
    rng = np.random.default_rng([seed, 12])
    sigma = 1.0
    mu = math.log(mean_events_per_user) - sigma**2 / 2
    n_views = np.clip(
        np.round(rng.lognormal(mu, sigma, size=users)), 5, max(5, 10 * mean_events_per_user)
    ).astype(np.int64)
    user_start = start_ms + rng.integers(0, START_SPREAD_MS, size=users)
    for u in range(users):
        n = int(n_views[u])
        k = min(int(rng.integers(1, MAX_INTERESTS + 1)), n_clusters)
        interests = rng.choice(n_clusters, size=k, replace=False, p=world.cluster_p)
        # per-view draws, vectorised: follow the chain? else which interest, which item in it
        follow = (rng.random(n) < P_CHAIN).tolist()
        which = interests[rng.integers(0, k, size=n)]
        pick = rng.random(n)
        jump = []
        for c, x in zip(which.tolist(), pick.tolist(), strict=True):
            m = world.members[c]
            jump.append(int(m[min(int(np.searchsorted(world.member_cdf[c], x)), len(m) - 1)]))
        new_session = rng.random(n) < 1.0 / MEAN_SESSION_LEN
        in_gap = np.exp(rng.uniform(math.log(2_000), math.log(600_000), size=n))
        out_gap = np.exp(rng.uniform(math.log(3_600_000), math.log(5 * 86_400_000), size=n))
        gap = np.where(new_session, out_gap, in_gap).astype(np.int64).tolist()
        uid = user_id(u, users)
        ts = int(user_start[u])
        prev = -1
        for j in range(n):
            if j > 0:
                ts += gap[j]
            cur = succ[prev] if prev >= 0 and follow[j] else jump[j]
            yield RawEvent(uid, ids[cur], ts, "view", None)
            prev = cur
