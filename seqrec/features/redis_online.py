"""The Redis online store, written and read directly in Feast's own Redis layout.

Feast's Redis store keeps one hash per entity: key = serialized entity key + project name;
fields = murmur3(``"<view>:<feature>"``) -> serialized ``feast.types.Value``, plus
``_ts:<view>`` -> a serialized ``Timestamp``. seqrec writes and reads exactly that layout (built
with Feast's own key helpers), so Feast's ``get_online_features`` and ``feast serve`` read what
seqrec materialized, while seqrec skips Feast's per-row Python conversions: materialization is a
pipelined HSET stream and a lookup is one pipelined HMGET round trip.

Writes are unconditional upserts of each user's newest feature row (no timestamp comparison):
a late-arriving event changes a user's sequence without changing the newest event time, and the
recomputed row must still replace the stored one. The ingestion watermark of the online state
lives in the same Redis (``seqrec:<project>:online_state``): if Redis loses its data, the
watermark goes with it and the next incremental run falls back to a full one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from seqrec.compat.feast_private import entity_key, feature_hash
from seqrec.errors import StoreUnavailable
from seqrec.faults import kill_point
from seqrec.features import encode
from seqrec.features.online_rows import OnlineRows

ENTITY_KEY_VERSION = 3
JOIN_KEY = "user_id"
LIST_FEATURES = ("item_seq", "type_seq", "ts_seq")


def _client(url: str, connect_s: float = 2.0, read_s: float = 5.0) -> Any:
    import redis

    return redis.Redis.from_url(
        url, socket_connect_timeout=connect_s, socket_timeout=read_s, health_check_interval=30
    )


def _unavailable(url: str, exc: Exception, timeout_s: float | None = None) -> StoreUnavailable:
    import redis

    if timeout_s is not None and isinstance(exc, redis.TimeoutError | TimeoutError):
        return StoreUnavailable(
            f"online store too slow: no answer within {timeout_s * 1000:g} ms ({exc})",
            where=_safe_url(url),
            hint="check Redis latency; serving waits [serve] store_timeout_ms",
        )
    return StoreUnavailable(
        f"online store unreachable: {exc}",
        where=_safe_url(url),
        hint="is Redis running? check features.redis_url / SEQREC_REDIS_URL",
    )


def _safe_url(url: str) -> str:
    """The URL with its password masked."""
    from seqrec.redact import redact_url

    return redact_url(url)


class RedisOnline:
    """One feature view's rows in Redis, in Feast's layout."""

    def __init__(self, url: str, project: str, view: str, features: Sequence[str]):
        import redis

        self.url = url
        self.project = project
        self.view = view
        self.features = list(features)
        self._project_bytes = project.encode()
        self._fields = [feature_hash(view, f) for f in self.features]
        self._ts_field = f"_ts:{view}".encode()
        self._read_fields = [*self._fields, self._ts_field]
        self._errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.client = _client(url)
        self.timeout_s: float | None = None  # set_timeout's bound (None: the defaults above)
        self._head = self.feast_key("")[: -(4 + len(self._project_bytes))]  # up to id length
        self.state_key = f"seqrec:{project}:online_state"

    # -- keys ---------------------------------------------------------------------------------

    def feast_key(self, user_id: str) -> bytes:
        """The key as Feast serializes it (the reference for :meth:`key`)."""
        return entity_key(JOIN_KEY, user_id, ENTITY_KEY_VERSION) + self._project_bytes

    def key(self, user_id: str) -> bytes:
        """Feast's key for ``user_id``, assembled from the fixed head (same bytes, 4x faster)."""
        raw = user_id.encode()
        return self._head + len(raw).to_bytes(4, "little") + raw + self._project_bytes

    def owns(self, key: bytes) -> bool:
        """Whether ``key`` is a user key of this project (not another project's lookalike)."""
        h = len(self._head)
        if not key.startswith(self._head) or len(key) < h + 4:
            return False
        n = int.from_bytes(key[h : h + 4], "little")
        return len(key) == h + 4 + n + len(self._project_bytes) and key.endswith(
            self._project_bytes
        )

    def _scan(self) -> Iterable[bytes]:
        pattern = b"*" + self._project_bytes
        return (k for k in self.client.scan_iter(match=pattern, count=10_000) if self.owns(k))

    def set_timeout(self, seconds: float) -> None:
        """Bound connecting and each reply by ``seconds`` (serving: a store slower than that
        counts as unavailable); a :class:`StoreUnavailable` says so when it expires."""
        self.client = _client(self.url, seconds, seconds)
        self.timeout_s = seconds

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except self._errors:
            return False

    # -- writing ------------------------------------------------------------------------------

    def write(
        self,
        rows: pd.DataFrame | OnlineRows,
        *,
        chunk: int = 5_000,
        progress: Callable[[int], Any] | None = None,
    ) -> int:
        """Upsert each row (one user's newest features) as that user's online hash.

        The values are encoded by :mod:`seqrec.features.encode` (the bytes Feast writes) and
        sent as one pipelined stream of HSET commands per chunk.
        """
        if isinstance(rows, pd.DataFrame):
            rows = OnlineRows.from_frame(rows, self.features)
        written = 0
        try:
            for start in range(0, len(rows), chunk):
                part = rows.slice(start, min(start + chunk, len(rows)))
                self._send(self._commands(part), len(part))
                kill_point("materialize.batch")
                written += len(part)
                if progress is not None:
                    progress(len(part))
        except self._errors as exc:
            raise _unavailable(self.url, exc) from None
        return written

    def _commands(self, rows: OnlineRows) -> bytes:
        """RESP-encoded ``HSET key ts_field ts f1 v1 ...`` for every row."""
        columns: list[list[bytes]] = []
        for name in self.features:
            if name in rows.lists:
                flat, lengths = rows.lists[name]
                columns.append(encode.int64_lists(flat, lengths))
            else:
                columns.append(encode.int64s(rows.scalars[name]))
        stamps = encode.timestamps(rows.ts_us)
        n_args = 2 + 2 * (len(self.features) + 1)
        field_heads = [b"$%d\r\n%s\r\n" % (len(f), f) for f in self._fields]
        ts_head = b"$%d\r\n%s\r\n" % (len(self._ts_field), self._ts_field)
        out: list[bytes] = []
        append = out.append
        for i, user in enumerate(rows.user_ids):
            key = self.key(user)
            append(b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (n_args, len(key), key))
            append(ts_head)
            ts = stamps[i]
            append(b"$%d\r\n%s\r\n" % (len(ts), ts))
            for head, col in zip(field_heads, columns, strict=True):
                v = col[i]
                append(head)
                append(b"$%d\r\n%s\r\n" % (len(v), v))
        return b"".join(out)

    def _send(self, payload: bytes, n_commands: int) -> None:
        """Write pre-encoded commands on one pooled connection and read their replies."""
        import redis

        conn = self.client.connection_pool.get_connection()
        try:
            conn.send_packed_command([payload], check_health=False)
            errors = []
            for _ in range(n_commands):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:
                    errors.append(str(exc))
            if errors:
                raise redis.ResponseError(f"{len(errors)} HSET failed, first: {errors[0]}")
        except BaseException:
            conn.disconnect()  # unknown protocol state: never reuse it
            raise
        finally:
            self.client.connection_pool.release(conn)

    # -- reading ------------------------------------------------------------------------------

    def read(self, user_ids: Iterable[str]) -> dict[str, list[Any]]:
        """Feast ``to_dict()``-shaped features of ``user_ids``; None for users not online."""
        ids = list(user_ids)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for u in ids:
                    pipe.hmget(self.key(u), self._read_fields)
                replies = pipe.execute()
        except self._errors as exc:
            raise _unavailable(self.url, exc, self.timeout_s) from None
        out: dict[str, list[Any]] = {JOIN_KEY: ids}
        cols: list[list[Any]] = [[] for _ in self.features]
        for reply in replies:
            for j, (name, raw) in enumerate(zip(self.features, reply, strict=False)):
                if raw is None:
                    cols[j].append(None)
                    continue
                v = ValueProto.FromString(raw)
                cols[j].append(list(v.int64_list_val.val) if name in LIST_FEATURES else v.int64_val)
        for name, col in zip(self.features, cols, strict=True):
            out[name] = col
        return out

    # -- state --------------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any] | None:
        try:
            raw = self.client.get(self.state_key)
        except self._errors as exc:
            raise _unavailable(self.url, exc) from None
        return json.loads(raw) if raw else None

    def write_state(self, state: dict[str, Any]) -> None:
        try:
            self.client.set(self.state_key, json.dumps(state))
        except self._errors as exc:
            raise _unavailable(self.url, exc) from None

    def count_keys(self, limit: int = 10_000_000) -> int:
        """Online users of this project (a SCAN; for status and tests, not hot paths)."""
        n = 0
        try:
            for _ in self._scan():
                n += 1
                if n >= limit:
                    break
        except self._errors as exc:
            raise _unavailable(self.url, exc) from None
        return n

    def drop(self) -> int:
        """Delete this project's online rows and state (tests, teardown)."""
        n = 0
        try:
            keys = list(self._scan())
            for start in range(0, len(keys), 5_000):
                n += int(self.client.delete(*keys[start : start + 5_000]))
            self.client.delete(self.state_key)
        except self._errors as exc:
            raise _unavailable(self.url, exc) from None
        return n
