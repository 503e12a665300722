"""The vectorised protobuf encoder writes exactly the bytes the protobuf library writes."""

from __future__ import annotations

import numpy as np
from feast.protos.feast.types.Value_pb2 import Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from seqrec.features import encode


def test_int64_lists_scalars_and_timestamps_match_protobuf() -> None:
    rng = np.random.default_rng(0)
    edge = [0, 1, 127, 128, 16383, 16384, 2**31, 2**62, 2**63 - 1, -1, -(2**63)]
    lists = [[], edge, [5]] + [
        list(rng.integers(-(2**40), 2**40, size=rng.integers(0, 60))) for _ in range(200)
    ]
    lengths = np.array([len(x) for x in lists])
    flat = np.array([v for x in lists for v in x], dtype=np.int64)
    got = encode.int64_lists(flat, lengths)
    want = [
        ValueProto(int64_list_val=Int64List(val=[int(v) for v in x])).SerializeToString()
        for x in lists
    ]
    assert got == want
    scalars = np.array(edge + list(rng.integers(-(10**12), 10**12, size=100)), dtype=np.int64)
    assert encode.int64s(scalars) == [
        ValueProto(int64_val=int(v)).SerializeToString() for v in scalars
    ]
    us = np.array([0, 1, 999_999, 1_000_000, 1_700_000_000_123_456], dtype=np.int64)
    assert encode.timestamps(us) == [
        Timestamp(seconds=int(t) // 10**6, nanos=int(t) % 10**6 * 1000).SerializeToString()
        for t in us
    ]
