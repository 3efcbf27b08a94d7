"""Prediction latency with the operator's console attached, against the same daemon without.

A box that has run for months has a long history: this bench gives the sample pipeline
10,000 ingestions (each with its data set version) and a production model, then drives
predict with an open-loop load (a fixed rate, latency measured from when each request was
due, so a stalled event loop shows in full instead of being hidden by a client that waits
for it), single rows over 8 keep-alive connections, in its own process.

(a) floor: predict alone;
(b) the same with consoles attached: each polls what the console's pipeline screen asks
    every 1.5 s (`GET /v1/pipelines/{name}`, `/v1/pipelines`, `/ingestions?limit=200`,
    `/v1/feature-sets`) and the overview's (`/v1/pipelines`, `/v1/events`, `/v1/system`),
    through the console's own client.

Cells interleave (a) and (b) `--repeats` times; medians of p50, p99, p99.9 and max are
printed, with the ratio (b) / (a) of p99. Target: p99 with consoles within 1.5x of without.

    .venv/bin/python bench/console_poll.py [--seconds 6] [--repeats 3] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"
PREDICT_PATH = "/v1/pipelines/machines/predict"
CONFIG = """
[ingest]
settle_seconds = 0.2
rescan_seconds = 1.0

[pipelines.machines]
target = "failed_within_24h"
timestamp = "timestamp"
id = "reading_id"
"""
HISTORY = 10_000  # ingestions (and data set versions) of the seeded pipeline
CONSOLE_SECONDS = 1.5  # the console's refresh


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _start(state: Path, log_name: str) -> tuple[subprocess.Popen[bytes], str]:
    runfile = state / "daemon.json"
    runfile.unlink(missing_ok=True)
    log = open(state.parent / log_name, "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--state-dir",
                             str(state), "--port", "0"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    _wait(lambda: runfile.exists() or proc.poll() is not None, 60, "the daemon to start")
    if proc.poll() is not None:
        raise RuntimeError((state.parent / log_name).read_text())
    return proc, json.loads(runfile.read_text())["url"]


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _served(url: str) -> bool:
    import httpx

    r = httpx.get(url + "/ready", timeout=5)
    return r.status_code == 200 and r.json()["models"].get("machines") == 1


def prepare(workdir: Path) -> Path:
    """A state dir whose `machines` has v1 in production and a long history."""
    state = workdir / "state"
    state.mkdir(parents=True)
    (state / "appliance.toml").write_text(CONFIG)
    proc, url = _start(state, "train.log")
    try:
        inbox = state / "inbox" / "machines"
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / "machines_01.csv", inbox / ".machines_01.csv.part")
        os.replace(inbox / ".machines_01.csv.part", inbox / "machines_01.csv")
        _wait(lambda: _served(url), 120, "the model to be trained and served")
    finally:
        _stop(proc)
    sys.path.insert(0, str(ROOT))
    from appliance.store import Store

    store = Store.open(state / "appliance.db")
    try:
        for i in range(HISTORY):
            status = "accepted" if i % 10 else "rejected"
            store.record_ingestion(
                pipeline="machines", file_name=f"reading_{i:05d}.csv", status=status,
                received_at="2026-01-01T00:00:00.000Z", sha256=f"{i:064x}",
                size_bytes=120_000, rows=3000, columns=11,
                code=None if status == "accepted" else "bad_value",
                reason=None if status == "accepted" else "a value does not convert",
                details={} if status == "accepted" else {"column": "rpm", "row": 7,
                                                         "value": "fast"},
                warnings=["2 extra columns dropped"], duration_ms=210.0,
                dataset=(f"datasets/machines/v{i + 2:06d}.parquet", 3000, f"{i:064x}")
                if status == "accepted" else None)
    finally:
        store.close()
    return state


# --- the open-loop load, in its own process -----------------------------------------------

class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, due: list[float], out: list[float],
                 done: asyncio.Future[None]) -> None:
        self.request, self.due, self.out, self.done = request, due, out, done
        self.buf = bytearray()
        self.need = -1
        self.i = 0
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        if self.i >= len(self.due):
            self.transport.close()
            return
        delay = self.due[self.i] - time.perf_counter()
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._send)
        else:
            self._send()

    def _send(self) -> None:
        self.transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                if head[9:12] != b"200":
                    self.errors += 1
                at = head.find(b"content-length:")
                stop = head.find(b"\r\n", at)
                self.need = end + 4 + int(head[at + 15:stop if stop > 0 else None])
            if len(self.buf) < self.need:
                return
            del self.buf[:self.need]
            self.need = -1
            # From when the request was due, not when it was sent: a stall counts in full.
            self.out.append(time.perf_counter() - self.due[self.i])
            self.i += 1
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _drive(host: str, port: int, body: bytes, rate: float, conns: int,
                 seconds: float, warmup: float) -> dict[str, Any]:
    request = (f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.2
    total = int((warmup + seconds) * rate)
    every = 1.0 / rate
    outs: list[list[float]] = []
    waits = []
    protocols = []
    for c in range(conns):
        due = [start + i * every for i in range(c, total, conns)]
        out: list[float] = []
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda d=due, o=out, f=done: _Conn(request, d, o, f), host, port)
        outs.append(out)
        waits.append(done)
        protocols.append(proto)
    await asyncio.wait_for(asyncio.gather(*waits), timeout=warmup + seconds + 60)
    skip = int(warmup * rate / conns)
    lat = sorted(x for out in outs for x in out[skip:])
    n = len(lat)

    def q(p: float) -> float:
        return lat[min(n - 1, int(n * p))] * 1e3

    return {"requests": n, "errors": sum(p.errors for p in protocols),
            "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": lat[-1] * 1e3}


def _load_child(spec: dict[str, Any], queue: Any) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    queue.put(runner(_drive(spec["host"], spec["port"], spec["body"].encode(), spec["rate"],
                            spec["conns"], spec["seconds"], spec["warmup"])))


# --- the consoles, in their own process -----------------------------------------------------

async def _consoles(url: str, token: str, n: int, stop_at: float) -> list[float]:
    sys.path.insert(0, str(ROOT))
    from tui.client import ApplianceClient, gather

    clients = [ApplianceClient(url, token) for _ in range(n)]
    took: list[float] = []

    async def one(client: ApplianceClient, offset: float) -> None:
        await asyncio.sleep(offset)
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await gather(client.pipeline("machines"), client.pipelines(),
                         client.ingestions("machines"), client.feature_sets())
            await gather(client.pipelines(), client.events(after=0), client.system())
            took.append(time.perf_counter() - t)
            await asyncio.sleep(max(0.0, CONSOLE_SECONDS - (time.perf_counter() - t)))

    await asyncio.gather(*(one(c, i * CONSOLE_SECONDS / n) for i, c in enumerate(clients)))
    for c in clients:
        await c.aclose()
    return took


def _console_child(url: str, token: str, n: int, seconds: float, queue: Any) -> None:
    queue.put(asyncio.run(_consoles(url, token, n, time.perf_counter() + seconds)))


def cell(url: str, token: str, body: str, args: argparse.Namespace,
         consoles: int) -> tuple[dict[str, Any], list[float]]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    spec = {"host": host, "port": int(port), "body": body, "rate": args.rate, "conns": 8,
            "seconds": args.seconds, "warmup": 1.0}
    children = [ctx.Process(target=_load_child, args=(spec, queue))]
    if consoles:
        children.append(ctx.Process(target=_console_child,
                                    args=(url, token, consoles, args.seconds + 1.5, queue)))
    for child in children:
        child.start()
    results = [queue.get(timeout=args.seconds + 120) for _ in children]
    for child in children:
        child.join(30)
    load = next(r for r in results if isinstance(r, dict))
    polls = next((r for r in results if isinstance(r, list)), [])
    return load, polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (medians)")
    parser.add_argument("--rate", type=float, default=1000.0, help="predict calls per second")
    parser.add_argument("--consoles", type=int, default=2, help="consoles attached in (b)")
    args = parser.parse_args()

    import polars as pl

    row = pl.read_csv(SAMPLES / "machines_02.csv").drop("failed_within_24h").head(1).to_dicts()
    body = json.dumps({"rows": row})
    workdir = Path(tempfile.mkdtemp(prefix="bench-console-"))
    proc = None
    try:
        state = prepare(workdir)
        proc, url = _start(state, "daemon.log")
        _wait(lambda: _served(url), 60, "the model to be served")
        token = (state / "token").read_text().strip()
        results: dict[str, list[dict[str, Any]]] = {"(a) predict alone": [],
                                                    "(b) with consoles": []}
        polls: list[float] = []
        print(f"{len(os.sched_getaffinity(0))} cores; {HISTORY:,} ingestions in the history; "
              f"{args.rate:g} predict/s open loop; {args.consoles} console(s) polling every "
              f"{CONSOLE_SECONDS} s in (b); {args.repeats} x {args.seconds:g} s per cell, "
              "interleaved; medians shown")
        for _ in range(args.repeats):
            for name, consoles in (("(a) predict alone", 0), ("(b) with consoles", args.consoles)):
                load, took = cell(url, token, body, args, consoles)
                results[name].append(load)
                polls.extend(took)
        print(f"\n{'':<20} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
              f"{'max ms':>8} {'errors':>6}")
        med: dict[str, dict[str, float]] = {}
        for name, runs in results.items():
            m = {k: statistics.median(r[k] for r in runs)
                 for k in ("requests", "p50_ms", "p99_ms", "p999_ms", "max_ms")}
            m["errors"] = sum(r["errors"] for r in runs)
            med[name] = m
            print(f"{name:<20} {m['requests']:>9.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                  f"{m['p999_ms']:>9.2f} {m['max_ms']:>8.2f} {m['errors']:>6.0f}")
        ratio = med["(b) with consoles"]["p99_ms"] / med["(a) predict alone"]["p99_ms"]
        print(f"\np99 with consoles / alone: {ratio:.2f}x (target <= 1.5x): "
              f"{'met' if ratio <= 1.5 else 'NOT met'}")
        if polls:
            print(f"one console refresh (7 GETs): median {statistics.median(polls) * 1e3:.1f} ms,"
                  f" max {max(polls) * 1e3:.1f} ms over {len(polls)} refreshes")
        print("The machine is shared: read medians and ratios, not single runs.")
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
