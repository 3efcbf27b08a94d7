"""The fleet console's refresh of 50 boxes, against bare HTTP polls as the floor.

The fleet: 3 real daemons (one serving the sample pipeline), and 47 stand-ins served by a
separate process: 27 that answer at once with the bytes a real daemon gave (healthy
boxes), 10 that answer each request after 1 s (slow links), 5 that accept a connection and
never answer (hung boxes: the poll times out) and 5 ports where nothing listens (boxes that
are off). Poll timeout 2 s for both sides.

1. Time to a full screen: from starting the console (FleetApp, headless, the real
   FleetPoller and FleetScreen) until every box has its row (up, or down/refused with why)
   and the screen is drawn; and the CPU this process used meanwhile. Floor: the same GETs
   of every box (pipelines, events, system), all boxes at once, bare httpx.AsyncClient per
   box + json.loads, until each box answered or failed.
2. Steady refresh: 10 s of polling every 2 s; the CPU this process used (% of one core),
   and how late a 50 ms timer on the console's event loop fired (what a key press would
   wait). Floor: the bare polls every 2 s for the same 10 s (every box every time, no
   backoff).

Medians of ROUNDS rounds, ours and the floor interleaved.
Run: .venv/bin/python bench/fleet.py
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui.fleet.app import FleetApp  # noqa: E402
from tui.fleet.config import FleetBox  # noqa: E402

ROUNDS = 5
TIMEOUT = 2.0
REFRESH = 2.0
STEADY_S = 10.0
KINDS = {"replay": 27, "slow": 10, "hung": 5, "off": 5}
REAL = 3
SLOW_S = 1.0
FREEZE = "--no-freeze" not in sys.argv  # as `appliance tui --fleet` runs it


# --- the stand-ins (run as `fleet.py --standins`, in their own process) --------------------


async def _serve(kind: str, bodies: dict[str, bytes], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            target = line.decode("latin-1").split(" ")[1]
            length = 0
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if kind == "hung":
                await asyncio.sleep(3600)
            if kind == "slow":
                await asyncio.sleep(SLOW_S)
            body = bodies.get(target.split("?")[0])
            status = "200 OK" if body is not None else "404 Not Found"
            body = body if body is not None else b'{"code":"not_found","message":"Not Found"}'
            writer.write(f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                         f"content-length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, IndexError):
        pass
    finally:
        writer.close()


async def standins(spec: dict[str, object]) -> None:
    bodies = {k: v.encode() for k, v in spec["bodies"].items()}  # type: ignore[union-attr]
    ports = {}
    for kind in ("replay", "slow", "hung"):
        ports[kind] = []
        for _ in range(KINDS[kind]):
            server = await asyncio.start_server(
                lambda r, w, kind=kind: _serve(kind, bodies, r, w), "127.0.0.1", 0)
            ports[kind].append(server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# --- the real daemons ------------------------------------------------------------------------


def start_daemon(state: Path, with_data: bool) -> tuple[subprocess.Popen[bytes], str]:
    state.mkdir(parents=True)
    (state / "appliance.toml").write_text(
        '[ingest]\nsettle_seconds = 0.2\n[pipelines.machines]\n'
        'target = "failed_within_24h"\ntimestamp = "timestamp"\nid = "reading_id"\n')
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--state-dir",
                             str(state), "--port", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    runfile = state / "daemon.json"
    deadline = time.monotonic() + 60
    while not runfile.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("a daemon did not start")
        time.sleep(0.05)
    url = json.loads(runfile.read_text())["url"]
    if with_data:
        inbox = state / "inbox" / "machines"
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "sample_data" / "machines_01.csv", inbox / ".m.part")
        (inbox / ".m.part").rename(inbox / "machines_01.csv")
        while time.monotonic() < deadline:
            if httpx.get(f"{url}/ready").json().get("models", {}).get("machines"):
                break
            time.sleep(0.2)
    return proc, url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- ours and the floor ----------------------------------------------------------------------


PATHS = [("/v1/pipelines", None), ("/v1/events", {"limit": 5}),
         ("/v1/system", {"seconds": 30})]


async def bare_poll(clients: dict[str, httpx.AsyncClient]) -> dict[str, str]:
    async def one(client: httpx.AsyncClient) -> str:
        try:
            answers = await asyncio.gather(*(client.get(p, params=q) for p, q in PATHS))
            for a in answers:
                json.loads(a.content)
            return "up"
        except httpx.HTTPError:
            return "down"

    states = await asyncio.gather(*(one(c) for c in clients.values()))
    return dict(zip(clients, states, strict=True))


def bare_clients(boxes: list[FleetBox]) -> dict[str, httpx.AsyncClient]:
    verify = httpx.create_ssl_context()  # one for all, as the console does
    return {b.name: httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT, verify=verify)
            for b in boxes}


async def floor_full_screen(boxes: list[FleetBox]) -> tuple[float, float, dict[str, str]]:
    clients = bare_clients(boxes)
    wall, cpu = time.perf_counter(), time.process_time()
    states = await bare_poll(clients)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await asyncio.gather(*(c.aclose() for c in clients.values()))
    return wall, cpu, states


async def floor_steady(boxes: list[FleetBox]) -> float:
    clients = bare_clients(boxes)
    await bare_poll(clients)
    cpu, end = time.process_time(), time.monotonic() + STEADY_S

    async def loop(name: str) -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            await bare_poll({name: clients[name]})
            await asyncio.sleep(max(0.0, min(REFRESH - (time.monotonic() - started),
                                             end - time.monotonic())))

    await asyncio.gather(*(loop(n) for n in clients))
    used = time.process_time() - cpu
    await asyncio.gather(*(c.aclose() for c in clients.values()))
    return used / STEADY_S


def _off(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


async def ours_full_screen(boxes: list[FleetBox], no_network: bool = False
                           ) -> tuple[float, float, dict[str, str]]:
    """``no_network``: every box refused at once (a MockTransport), to tell the app's own
    start and drawing from the waiting."""
    transports = ({b.name: httpx.MockTransport(_off) for b in boxes}  # type: ignore[misc]
                  if no_network else None)
    wall, cpu = time.perf_counter(), time.process_time()
    app = FleetApp(boxes, refresh_seconds=3600, poll_timeout=TIMEOUT,
                   transports=transports)  # type: ignore[arg-type]
    async with app.run_test(size=(140, 70)) as pilot:
        while any(s.state == "connecting" for s in app.poller.states.values()):
            await asyncio.sleep(0.01)
        app.screen.redraw(force=True)  # type: ignore[attr-defined]
        await pilot.pause()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        states = {n: s.state for n, s in app.poller.states.items()}
    return wall, cpu, states


async def ours_steady(boxes: list[FleetBox]) -> tuple[float, list[float]]:
    app = FleetApp(boxes, refresh_seconds=REFRESH, poll_timeout=TIMEOUT, max_backoff=8,
                   freeze_gc=FREEZE)
    lags: list[float] = []
    async with app.run_test(size=(140, 70)) as pilot:
        while any(s.state == "connecting" for s in app.poller.states.values()):
            await asyncio.sleep(0.05)
        cpu, end = time.process_time(), time.monotonic() + STEADY_S
        while time.monotonic() < end:  # a timer on the console's loop: how late it fires
            due = time.perf_counter() + 0.05
            await asyncio.sleep(0.05)
            lags.append(time.perf_counter() - due)
        used = time.process_time() - cpu
        await pilot.pause()
    return used / STEADY_S, lags


def med(values: list[float]) -> float:
    return statistics.median(values)


async def run(boxes: list[FleetBox]) -> None:
    ours, floor, ours_cpu, floor_cpu, start, start_cpu = [], [], [], [], [], []
    for _ in range(ROUNDS):
        w, c, _states = await ours_full_screen(boxes, no_network=True)
        start.append(w)
        start_cpu.append(c)
        w, c, states_ours = await ours_full_screen(boxes)
        ours.append(w)
        ours_cpu.append(c)
        w, c, states_floor = await floor_full_screen(boxes)
        floor.append(w)
        floor_cpu.append(c)
    up_ours = sum(s == "up" for s in states_ours.values())
    up_floor = sum(s == "up" for s in states_floor.values())
    print(f"fleet of {len(boxes)} boxes: {REAL} real daemons, " + ", ".join(
        f"{n} {k}" for k, n in KINDS.items()) + f"; poll timeout {TIMEOUT:g} s; "
        f"{ROUNDS} rounds")
    print(f"  boxes up: console {up_ours}, floor {up_floor}")
    print("time to a full screen")
    print(f"  console (FleetApp, poller + screen)  median {med(ours):6.3f} s   "
          f"CPU {med(ours_cpu):6.3f} s")
    print(f"  floor: bare httpx, same GETs        median {med(floor):6.3f} s   "
          f"CPU {med(floor_cpu):6.3f} s")
    print(f"  ratio wall {med(ours) / med(floor):.2f}, CPU {med(ours_cpu) / med(floor_cpu):.2f}")
    print(f"  of which the console's own start and first drawing (every box refused at once, "
          f"no network): median {med(start):.3f} s, CPU {med(start_cpu):.3f} s")
    steady_ours, lags = await ours_steady(boxes)
    steady_floor = await floor_steady(boxes)
    lags_ms = sorted(x * 1000 for x in lags)
    p99 = lags_ms[min(len(lags_ms) - 1, int(len(lags_ms) * 0.99))]
    print(f"steady refresh every {REFRESH:g} s for {STEADY_S:g} s")
    print(f"  console CPU {steady_ours * 100:5.1f}% of a core; its event loop: a 50 ms timer "
          f"late by median {med(lags_ms):.1f} ms, p99 {p99:.1f} ms, max {lags_ms[-1]:.1f} ms")
    print(f"  floor CPU   {steady_floor * 100:5.1f}% of a core (every box every time, no "
          "backoff)")
    print(f"  ratio CPU {steady_ours / steady_floor:.2f}")


def main() -> None:
    if "--standins" in sys.argv:
        asyncio.run(standins(json.loads(sys.stdin.readline())))
        return
    with tempfile.TemporaryDirectory() as tmp:
        daemons = [start_daemon(Path(tmp) / f"box{i}", with_data=i == 0) for i in range(REAL)]
        helper = None
        try:
            url = daemons[0][1]
            bodies = {p: httpx.get(url + p, params=q).text for p, q in PATHS}
            bodies["/health"] = httpx.get(url + "/health").text
            helper = subprocess.Popen([sys.executable, __file__, "--standins"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert helper.stdin is not None and helper.stdout is not None
            helper.stdin.write(json.dumps({"bodies": bodies}) + "\n")
            helper.stdin.flush()
            ports = json.loads(helper.stdout.readline())
            boxes = [FleetBox(name=f"real-{i}", url=u) for i, (_, u) in enumerate(daemons)]
            for kind in ("replay", "slow", "hung"):
                boxes += [FleetBox(name=f"{kind}-{i}", url=f"http://127.0.0.1:{p}")
                          for i, p in enumerate(ports[kind])]
            boxes += [FleetBox(name=f"off-{i}", url=f"http://127.0.0.1:{free_port()}")
                      for i in range(KINDS["off"])]
            asyncio.run(run(boxes))
        finally:
            if helper is not None:
                helper.kill()
                helper.wait()
            for proc, _ in daemons:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
