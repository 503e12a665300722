"""Vectorised protobuf encoding of online feature rows, byte for byte what Feast writes.

Materialization spends its time turning each user's arrays into ``feast.types.Value`` messages.
For ``int64_list_val`` (field 14) holding an ``Int64List`` (field 1, packed varints), for
``int64_val`` (field 4) and for the ``Timestamp`` (fields 1 and 2) the wire format is simple
enough to produce with numpy for all users at once: the varints of every element are computed
in one pass, and each user's message is a slice of that buffer behind a short header. Tests
compare the bytes with the protobuf library's for random rows (negatives, zeros, empty lists).
"""

from __future__ import annotations

import itertools

import numpy as np

_TAG_INT64_LIST = b"\x72"  # field 14, length-delimited
_TAG_PACKED = b"\x0a"  # Int64List.val: field 1, length-delimited (packed)
_TAG_INT64 = b"\x20"  # field 4, varint
_TAG_SECONDS = b"\x08"
_TAG_NANOS = b"\x10"


def varint(v: int) -> bytes:
    """One protobuf varint (negative int64 as its 64-bit two's complement)."""
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_SMALL = [varint(i) for i in range(1 << 14)]


def _v(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 16384 else varint(n)


def varints(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """All values' varints back to back, and each value's end offset in that buffer."""
    u = values.astype(np.int64).view(np.uint64)
    lens = np.ones(len(u), dtype=np.int64)
    for k in range(1, 10):
        lens += u >= np.uint64(1 << (7 * k))
    ends = np.cumsum(lens)
    starts = ends - lens
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
    for j in range(10):
        sel = np.flatnonzero(lens > j)
        if not len(sel):
            break
        byte = ((u[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        more = (lens[sel] - 1 > j).astype(np.uint8) << 7
        out[starts[sel] + j] = byte | more
    return out.tobytes(), ends


def int64_lists(flat: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """Serialized ``Value(int64_list_val=...)`` per row; row i holds the next lengths[i]
    values of ``flat``."""
    buf, ends = varints(flat)
    at = np.concatenate([[0], ends])  # at[k]: byte offset of element k
    bounds = at[np.concatenate([[0], np.cumsum(lengths)])].tolist()
    out = []
    for a, b in itertools.pairwise(bounds):
        n = b - a
        if n == 0:
            out.append(_TAG_INT64_LIST + b"\x00")
            continue
        inner = _TAG_PACKED + _v(n) + buf[a:b]
        out.append(_TAG_INT64_LIST + _v(len(inner)) + inner)
    return out


def int64s(values: np.ndarray) -> list[bytes]:
    """Serialized ``Value(int64_val=v)`` per value."""
    return [_TAG_INT64 + _v(v) for v in values.astype(np.int64).tolist()]


def timestamps(us: np.ndarray) -> list[bytes]:
    """Serialized ``google.protobuf.Timestamp`` per epoch-microsecond value (>= 0)."""
    out = []
    for t in us.astype(np.int64).tolist():
        s, n = divmod(t, 1_000_000)
        msg = (_TAG_SECONDS + _v(s) if s else b"") + (_TAG_NANOS + _v(n * 1000) if n else b"")
        out.append(msg)
    return out
