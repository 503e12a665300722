"""A bounded closed-loop HTTP load generator (run as its own process by serve_load.py).

``python bench/loadgen.py URL PATH BODIES.json CONCURRENCY REQUESTS [TOKEN]`` prints one JSON
object: latencies (ms) p50/p95/p99/max, requests/s, status counts and errors. Each of the
CONCURRENCY clients keeps one HTTP/1.1 keep-alive connection and sends its next request as
soon as the previous answer is in (closed loop); REQUESTS requests in all, bodies taken round
robin. The client is a few lines of asyncio over raw sockets so that the load generator, which
shares the machine's cores with the server, costs as little CPU as possible.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlparse


async def _client(
    host: str,
    port: int,
    requests: list[bytes],
    next_index: list[int],
    total: int,
    lat: list[float],
    status: Counter[int],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            i = next_index[0]
            if i >= total:
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
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            lat.append((time.perf_counter() - t0) * 1000)
            status[code] += 1
    finally:
        writer.close()


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def run(
    url: str, path: str, bodies: list[dict], concurrency: int, total: int, token: str = ""
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
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            _client(host, port, requests, next_index, total, lat, status, errors)
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
    url, path, bodies_file, conc, total = sys.argv[1:6]
    token = sys.argv[6] if len(sys.argv) > 6 else ""
    with open(bodies_file) as f:
        bodies = json.load(f)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(run(url, path, bodies, int(conc), int(total), token))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
