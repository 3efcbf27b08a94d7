"""What one refresh of the console costs, against its floor.

1. Fetch: the overview's poll (pipelines, new events, system) through ApplianceClient
   (httpx + msgspec into the api_types Structs) against a real daemon, vs the floor: the
   same three GETs with a bare httpx.AsyncClient and json.loads.
2. Draw: a 500-row event feed refreshed with one new event on top (FilterTable.set_rows:
   diff, re-layout, keep the cursor), vs the floor: DataTable.clear() + add_rows() of the
   same cells. This runs on the UI's thread, so it is what could delay a key press.

Run: .venv/bin/python bench/tui_refresh.py
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui.client import ApplianceClient  # noqa: E402
from tui.widgets.filter_table import FilterTable  # noqa: E402

ROUNDS = 200


def start_daemon(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    (state / "appliance.toml").write_text(
        '[ingest]\nsettle_seconds = 0.2\n[pipelines.machines]\n'
        'target = "failed_within_24h"\ntimestamp = "timestamp"\nid = "reading_id"\n')
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--state-dir",
                             str(state), "--port", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runfile = state / "daemon.json"
    deadline = time.monotonic() + 60
    while not runfile.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the daemon did not start")
        time.sleep(0.05)
    url = json.loads(runfile.read_text())["url"]
    inbox = state / "inbox" / "machines"
    inbox.mkdir(parents=True, exist_ok=True)
    for name in ("machines_01.csv", "machines_broken.csv"):
        shutil.copyfile(ROOT / "sample_data" / name, inbox / f".{name}.part")
        (inbox / f".{name}.part").rename(inbox / name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/ready").json()
        if ready.get("models", {}).get("machines"):
            break
        time.sleep(0.2)
    return proc, url


async def bench_fetch(url: str) -> tuple[list[float], list[float]]:
    ours, floor = [], []
    client = ApplianceClient(url)
    bare = httpx.AsyncClient(base_url=url, timeout=5)

    async def optional_system():
        try:
            return await client.system()
        except Exception as exc:  # NotAvailable on a daemon without monitoring
            return exc

    async def bare_get(path: str, **params: object):
        resp = await bare.get(path, params=params or None)
        return json.loads(resp.content)

    for _ in range(10):  # warm both connections
        await client.pipelines()
        await bare_get("/v1/pipelines")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        await asyncio.gather(client.pipelines(), client.events(after=0), optional_system())
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        await asyncio.gather(bare_get("/v1/pipelines"), bare_get("/v1/events", after=0),
                             bare_get("/v1/system"))
        floor.append(time.perf_counter() - t)
    await client.aclose()
    await bare.aclose()
    return ours, floor


def feed_rows(first: int, n: int = 500) -> list[tuple[str, list[object]]]:
    return [(str(i), [Text("09:59:48", style="dim"), "machines",
                      Text("ingested", style="green"),
                      Text(f"machines_{i:04d}.csv: 3000 rows as data set v{i}")])
            for i in range(first + n, first, -1)]


class Bench(App[None]):
    def compose(self) -> ComposeResult:
        yield FilterTable(id="ours")
        yield DataTable(id="floor")

    def on_mount(self) -> None:
        for table in (self.query_one("#ours"), self.query_one("#floor")):
            for key in ("ts", "pipeline", "kind", "message"):
                table.add_column(key, key=key)


async def bench_draw() -> tuple[list[float], list[float], list[float]]:
    rebuild, in_place, floor = [], [], []
    app = Bench()
    async with app.run_test(size=(100, 30)) as pilot:
        ours = app.query_one("#ours", FilterTable)
        bare = app.query_one("#floor", DataTable)
        ours.set_rows(feed_rows(0))
        await pilot.pause()
        for i in range(1, ROUNDS // 4 + 1):
            rows = feed_rows(i)
            t = time.perf_counter()
            ours.set_rows(rows)
            rebuild.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours.set_rows(rows)  # nothing new: the in-place path
            in_place.append(time.perf_counter() - t)
            t = time.perf_counter()
            bare.clear()
            bare.add_rows([cells for _, cells in rows])
            floor.append(time.perf_counter() - t)
            await pilot.pause()
    return rebuild, in_place, floor


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_daemon(Path(tmp))
        try:
            ours, floor = asyncio.run(bench_fetch(url))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"fetch one overview refresh ({ROUNDS} rounds, real daemon on loopback)")
    print(f"  ApplianceClient + msgspec Structs   median {ms(ours):7.2f} ms")
    print(f"  floor: bare httpx + json.loads      median {ms(floor):7.2f} ms")
    print(f"  ratio {ms(ours) / ms(floor):.2f}")
    rebuild, in_place, bare = asyncio.run(bench_draw())
    print(f"draw a 500-row event feed ({len(rebuild)} rounds)")
    print(f"  FilterTable.set_rows, one new row   median {ms(rebuild):7.2f} ms")
    print(f"  FilterTable.set_rows, nothing new   median {ms(in_place):7.2f} ms")
    print(f"  floor: DataTable.clear + add_rows   median {ms(bare):7.2f} ms")
    print(f"  ratio (new row / floor) {ms(rebuild) / ms(bare):.2f}, "
          f"(nothing new / floor) {ms(in_place) / ms(bare):.2f}")


if __name__ == "__main__":
    main()
