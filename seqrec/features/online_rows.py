"""Users' newest feature rows in columnar form, ready to encode for the online store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LIST_FEATURES = ("item_seq", "type_seq", "ts_seq")


@dataclass
class OnlineRows:
    """One row per user: ids, row time (epoch µs), list features as (flat values, lengths),
    scalar features as arrays."""

    user_ids: list[str]
    ts_us: np.ndarray
    lists: dict[str, tuple[np.ndarray, np.ndarray]]
    scalars: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.user_ids)

    def slice(self, start: int, stop: int) -> OnlineRows:
        lists = {}
        for name, (flat, lengths) in self.lists.items():
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            lists[name] = (flat[offsets[start] : offsets[stop]], lengths[start:stop])
        return OnlineRows(
            self.user_ids[start:stop],
            self.ts_us[start:stop],
            lists,
            {k: v[start:stop] for k, v in self.scalars.items()},
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, features: list[str]) -> OnlineRows:
        """From a frame with user_id, event_timestamp and feature columns (lists or ints)."""
        lists, scalars = {}, {}
        for name in features:
            if name in LIST_FEATURES:
                seqs = [list(v) for v in df[name]]
                lengths = np.array([len(v) for v in seqs], dtype=np.int64)
                flat = np.array([x for v in seqs for x in v], dtype=np.int64)
                lists[name] = (flat, lengths)
            else:
                scalars[name] = df[name].to_numpy(dtype=np.int64)
        ts = df["event_timestamp"].to_numpy(dtype="datetime64[us]").astype(np.int64)
        return cls([str(u) for u in df["user_id"]], ts, lists, scalars)
