"""The cost of request metrics on the predict path.

1. ``RequestMetrics.record`` per call (the counting done per request).
2. Predict calls straight into the Litestar app (ASGI, no network, one row per call), with
   the monitoring wrapper and row count, and with both removed (the floor). Rounds of the
   two interleave in random order so load from elsewhere hits both alike, and are timed
   in process CPU time. This is the strictest view: nothing else is in the way.
3. The same over real HTTP (uvicorn, one keep-alive client in the same process), in
   process CPU time.
   Target: under 5% of throughput.

    .venv/bin/python bench/request_metrics.py
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from appliance.core import StateDir, config
from appliance.daemon import Services
from appliance.monitoring import RequestMetrics
from appliance.serving import create_app

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[pipelines.machines]
target = "failed_within_24h"
timestamp = "timestamp"
id = "reading_id"
"""


def micro() -> None:
    metrics = RequestMetrics(10.0)
    n = 200_000
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        for i in range(n):
            metrics.record("machines", 200, 0.0004 + (i % 7) * 1e-4, 3)
        runs.append((time.perf_counter() - t) / n)
    print(f"  RequestMetrics.record    {statistics.median(runs) * 1e9:7.0f} ns per call "
          "(median of 7 x 200,000)")


def trained_services(root: Path) -> Services:
    (root / "appliance.toml").write_text(CONFIG)
    services = Services.build(config.load(root), StateDir(root))
    claimed = services.state.pipeline_dir(services.state.processing, "machines") / "1__m.csv"
    shutil.copyfile(ROOT / "sample_data/machines_01.csv", claimed)
    services.ingester.process(claimed, "machines")
    services.trainer.wait_idle(300)
    return services


async def call(app: Any, body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/pipelines/machines/predict", "raw_path": b"",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    await app(scope, receive, send)
    return status


async def throughput(app: Any, body: bytes, n: int) -> float:
    """Calls per second of this process's CPU time: time the box gives to other
    processes (the benchmark machine is shared) does not count against either side."""
    t = time.process_time()
    for _ in range(n):
        status = await call(app, body)
    assert status == 200, status
    return n / (time.process_time() - t)


ROUNDS = 60
CALLS = 300


def main() -> None:
    print("request-path accounting, per call:")
    micro()
    with tempfile.TemporaryDirectory() as tmp:
        services = trained_services(Path(tmp))
        row = pl.read_csv(ROOT / "sample_data/machines_02.csv").head(1) \
            .drop("failed_within_24h").to_dicts()
        body = json.dumps({"rows": row}).encode()
        monitor = services.monitor
        with_metrics = create_app(services)
        # The floor: the same app without the wrapper (the handler's row count then finds
        # no request to add to, and is switched off too).
        without = create_app(services)
        without.asgi_handler = without.asgi_handler.__wrapped__  # type: ignore[attr-defined]
        real_count = monitor.requests.count_rows

        def skip_rows(pipeline: str, rows: int) -> None:
            return None

        async def run() -> tuple[list[float], list[float]]:
            await throughput(with_metrics, body, 500)
            ours, floor = [], []
            order = random.Random(0)
            for _ in range(ROUNDS):  # both in each round, in random order: no order bias
                for side in order.sample(["ours", "floor"], 2):
                    if side == "ours":
                        monitor.requests.count_rows = real_count  # type: ignore[method-assign]
                        ours.append(await throughput(with_metrics, body, CALLS))
                    else:
                        monitor.requests.count_rows = skip_rows  # type: ignore[method-assign]
                        floor.append(await throughput(without, body, CALLS))
            monitor.requests.count_rows = real_count  # type: ignore[method-assign]
            return ours, floor

        ours, floor = asyncio.run(run())
        totals = monitor.requests.totals()["machines"]
        assert totals.requests == 500 + ROUNDS * CALLS, totals.requests  # floor: not counted
        assert totals.rows == totals.requests
        a, b = statistics.median(ours), statistics.median(floor)
        paired = statistics.median(f / o for o, f in zip(ours, floor, strict=True))
        print(f"predict, 1 row per call, in-process ASGI, {ROUNDS} interleaved rounds of "
              f"{CALLS} calls each:")
        print(f"  with request metrics   median {a:7.0f} calls/CPU-s ({1e6 / a:6.1f} us/call)"
              f"   best {max(ours):7.0f} calls/CPU-s ({1e6 / max(ours):6.1f} us/call)")
        print(f"  floor, without them    median {b:7.0f} calls/CPU-s ({1e6 / b:6.1f} us/call)"
              f"   best {max(floor):7.0f} calls/CPU-s ({1e6 / max(floor):6.1f} us/call)")
        print(f"  cost: {(1 - a / b) * 100:.1f}% of median throughput, "
              f"{(1 - max(ours) / max(floor)) * 100:.1f}% of best, "
              f"{(paired - 1) * 100:.1f}% median of paired rounds (target < 5%)")
        http_cost(with_metrics, without, body)
        services.trainer.shutdown()
        services.store.close()


def serve_in_thread(app: Any) -> tuple[Any, str]:
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def http_cost(with_metrics: Any, without: Any, body: bytes) -> None:
    """The same over real HTTP (uvicorn, keep-alive, one client). Timed in this process's
    CPU time (server and client threads): the box is shared, and wall-clock rates swing
    by more than the whole effect measured."""
    import httpx

    servers = {name: serve_in_thread(app) for name, app in
               (("ours", with_metrics), ("floor", without))}
    clients = {name: httpx.Client(base_url=url) for name, (_, url) in servers.items()}
    headers = {"content-type": "application/json"}
    rates: dict[str, list[float]] = {"ours": [], "floor": []}
    order = random.Random(1)
    for name in rates:
        for _ in range(200):
            clients[name].post("/v1/pipelines/machines/predict", content=body, headers=headers)
    for _ in range(ROUNDS // 2):
        for name in order.sample(list(rates), 2):
            t = time.process_time()
            for _ in range(CALLS):
                r = clients[name].post("/v1/pipelines/machines/predict", content=body,
                                       headers=headers)
            assert r.status_code == 200
            rates[name].append(CALLS / (time.process_time() - t))
    for name, (server, _) in servers.items():
        clients[name].close()
        server.should_exit = True
    a, b = statistics.median(rates["ours"]), statistics.median(rates["floor"])
    paired = statistics.median(f / o for o, f in zip(rates["ours"], rates["floor"],
                                                     strict=True))
    print(f"predict over HTTP (uvicorn in a thread, one keep-alive client), {ROUNDS // 2} "
          f"interleaved rounds of {CALLS} calls each:")
    print(f"  with request metrics   median {a:7.0f} calls/CPU-s ({1e6 / a:6.1f} us/call)")
    print(f"  floor, without them    median {b:7.0f} calls/CPU-s ({1e6 / b:6.1f} us/call)")
    print(f"  cost: {(1 - a / b) * 100:.1f}% of median throughput, "
          f"{(paired - 1) * 100:.1f}% median of paired rounds (target < 5%)")


if __name__ == "__main__":
    main()
