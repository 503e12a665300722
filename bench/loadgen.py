"""A bounded closed-loop HTTP load generator (run as its own process by serve_load.py).

``python bench/loadgen.py URL PATH BODIES.json CONCURRENCY REQUESTS [TOKEN]`` prints one JSON
object: latencies (ms) p50/p95/p99/max, requests/s, status counts and errors.

Options (after the positional arguments): ``--duration S`` keeps sending until S seconds have
passed (REQUESTS is then only a cap); ``--timeline FILE`` writes one JSON line per answered
request: start (wall-clock epoch seconds, to line up with other processes' events), latency (ms), HTTP status and the model tag that
answered (the ``X-Seqrec-Model`` header, else the body's ``"model"`` field). A process that
gets SIGTERM or SIGINT stops sending, writes its timeline and prints its summary. Each of the
CONCURRENCY clients keeps one HTTP/1.1 keep-alive connection and sends its next request as
soon as the previous answer is in (closed loop); REQUESTS requests in all, bodies taken round
robin. The client is a few lines of asyncio over raw sockets so that the load generator, which
shares the machine's cores with the server, costs as little CPU as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse

_TAG_BODY = re.compile(rb'"model"\s*:\s*"([^"]+)"')


def _tag(head: bytes, body: bytes) -> str | None:
    """The model tag that answered: the X-Seqrec-Model header, else the body's "model"."""
    for line in head.split(b"\r\n"):
        if line[:16].lower() == b"x-seqrec-model: ":
            return line[16:].decode()
    m = _TAG_BODY.search(body)
    return m.group(1).decode() if m else None


async def _client(
    host: str,
    port: int,
    requests: list[bytes],
    next_index: list[int],
    total: int,
    lat: list[float],
    status: Counter[int],
    errors: list[str],
    deadline: float,
    timeline: list[tuple[float, float, int, str | None]] | None,
    stop: asyncio.Event,
    wall_offset: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not stop.is_set():
            i = next_index[0]
            if i >= total or time.perf_counter() >= deadline:
                return
            next_index[0] = i + 1
            t0 = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                code = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                        break
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            ms = (time.perf_counter() - t0) * 1000
            lat.append(ms)
            status[code] += 1
            if timeline is not None:
                timeline.append((round(t0 - wall_offset, 4), round(ms, 3), code, _tag(head, body)))
    finally:
        writer.close()


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def run(
    url: str,
    path: str,
    bodies: list[dict],
    concurrency: int,
    total: int,
    token: str = "",
    duration: float = 0.0,
    timeline: list[tuple[float, float, int, str | None]] | None = None,
) -> dict:
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    requests = []
    for b in bodies:
        data = json.dumps(b).encode()
        requests.append(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
        )
    lat: list[float] = []
    status: Counter[int] = Counter()
    errors: list[str] = []
    next_index = [0]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.perf_counter()
    wall_offset = t0 - time.time()  # perf_counter - wall clock: timeline stamps are wall time
    deadline = t0 + duration if duration > 0 else float("inf")
    await asyncio.gather(
        *(
            _client(
                host,
                port,
                requests,
                next_index,
                total,
                lat,
                status,
                errors,
                deadline,
                timeline,
                stop,
                wall_offset,
            )
            for _ in range(concurrency)
        )
    )
    wall = time.perf_counter() - t0
    ms = sorted(lat)
    ok = status.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": total,
        "wall_s": round(wall, 3),
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(_pct(ms, 0.50), 2),
        "p95_ms": round(_pct(ms, 0.95), 2),
        "p99_ms": round(_pct(ms, 0.99), 2),
        "max_ms": round(ms[-1], 2) if ms else None,
        "status": {str(k): v for k, v in sorted(status.items())},
        "errors": len(errors) + (len(lat) - ok),
        "n_503": status.get(503, 0),
        "error_samples": errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="closed-loop HTTP load generator")
    for name in ("url", "path", "bodies", "concurrency", "requests"):
        ap.add_argument(name)
    ap.add_argument("token", nargs="?", default="")
    ap.add_argument("--duration", type=float, default=0.0)
    ap.add_argument("--timeline", default=None)
    a = ap.parse_args()
    with open(a.bodies) as f:
        bodies = json.load(f)
    timeline: list[Any] | None = [] if a.timeline else None
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(
        run(
            a.url,
            a.path,
            bodies,
            int(a.concurrency),
            int(a.requests),
            a.token,
            a.duration,
            timeline,
        )
    )
    if a.timeline and timeline is not None:
        with open(a.timeline, "w") as fh:
            for t, ms, code, tag in sorted(timeline):
                fh.write(json.dumps({"t": t, "ms": ms, "status": code, "model": tag}) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
