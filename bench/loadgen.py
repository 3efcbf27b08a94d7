"""A small bounded HTTP/1.1 load generator for the benchmarks: keep-alive connections on
loopback, pre-built requests, latency per request. Run in its own process so the client's
CPU shows up as what it is.

    python bench/loadgen.py URL BODY_FILE --concurrency 16 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


def build_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return host, port, head.encode() + body


async def _worker(host: str, port: int, request: bytes, deadline: float, max_requests: int,
                  latencies: list[float], statuses: dict[int, int],
                  bodies: list[bytes] | None) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            start = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            code = int(status_line.split()[1]) if status_line else 0
            statuses[code] = statuses.get(code, 0) + 1
            if bodies is not None and len(bodies) < 10_000:
                bodies.append(body)
    except (ConnectionError, asyncio.IncompleteReadError):
        statuses[-1] = statuses.get(-1, 0) + 1
    finally:
        writer.close()


async def run(url: str, body: bytes, concurrency: int, seconds: float,
              max_requests: int = 10_000_000, keep_bodies: bool = False) -> dict:
    host, port, request = build_request(url, body)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    bodies: list[bytes] | None = [] if keep_bodies else None
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*[
        _worker(host, port, request, deadline, max_requests, latencies, statuses, bodies)
        for _ in range(concurrency)
    ])
    elapsed = time.perf_counter() - started
    return summarize(latencies, statuses, elapsed, bodies)


def summarize(latencies: list[float], statuses: dict[int, int], elapsed: float,
              bodies: list[bytes] | None = None) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0

    failed = sum(n for code, n in statuses.items() if code != 200)
    out = {"requests": len(latencies), "seconds": round(elapsed, 3),
           "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
           "p50_ms": round(pct(0.50), 3), "p99_ms": round(pct(0.99), 3),
           "failed": failed, "statuses": {str(k): v for k, v in statuses.items()}}
    if bodies is not None:
        out["bodies"] = [b.decode() for b in bodies]
    out["latencies_ms"] = [round(x * 1000, 4) for x in latencies]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("body_file")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-requests", type=int, default=10_000_000)
    args = ap.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.url, body, args.concurrency, args.seconds,
                             args.max_requests))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
