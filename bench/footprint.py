"""Footprint of the daemon on an edge box: time from start to ``READY=1``, idle RSS, idle CPU.

One pipeline with a production model is loaded (the sample ``machines`` data, trained once
in a scratch state directory). ``READY=1`` is received on a real ``NOTIFY_SOCKET``, as
systemd would. The floor is the bare libraries doing the same job: a script that imports
Polars, LightGBM, Litestar and uvicorn, loads the same model file, serves a one-route app on
the same kind of socket and sends ``READY=1``.

Targets (issue 9): ready < 3 s, idle RSS < 200 MB, idle CPU < 1 %.

    .venv/bin/python bench/footprint.py [--seconds 60] [--starts 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"

CONFIG = """
[ingest]
settle_seconds = 0.2

[pipelines.machines]
target = "failed_within_24h"
timestamp = "timestamp"
id = "reading_id"
"""

FLOOR = r"""
import os, socket, sys
import lightgbm as lgb
import polars  # noqa: F401  (the appliance imports it too)
import uvicorn
from litestar import Litestar, get

booster = lgb.Booster(model_file=sys.argv[1])

@get("/health", sync_to_thread=False)
def health() -> dict:
    return {"status": "ok"}

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(128)

class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(os.environ["NOTIFY_SOCKET"])
        s.sendall(b"READY=1")
        s.close()

Server(uvicorn.Config(Litestar([health]), log_config=None, access_log=False,
                      lifespan="off")).run(sockets=[sock])
"""


class Listener:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.ready = threading.Event()
        self.ready_at = 0.0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except OSError:
                return
            if "READY=1" in data.split("\n") and not self.ready.is_set():
                self.ready_at = time.monotonic()
                self.ready.set()

    def reset(self) -> None:
        self.ready.clear()


def start(cmd: list[str], listener: Listener, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    listener.reset()
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path)}
    t0 = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if not listener.ready.wait(60):
        proc.kill()
        raise SystemExit(f"no READY=1 within 60 s from {cmd}; see {log}")
    return proc, listener.ready_at - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def prepare(state: Path, listener: Listener, log: Path) -> Path:
    """Train the sample model once; returns its model.txt."""
    state.mkdir()
    (state / "appliance.toml").write_text(CONFIG)
    proc, _ = start(appliance_cmd(state), listener, log)
    url = json.loads((state / "daemon.json").read_text())["url"]
    inbox = state / "inbox" / "machines"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLES / "machines_01.csv", inbox / ".part")
    os.replace(inbox / ".part", inbox / "machines_01.csv")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = httpx.get(url + "/ready", timeout=5)
        if r.status_code == 200 and r.json()["models"].get("machines"):
            break
        time.sleep(0.2)
    else:
        raise SystemExit("the sample model was not trained within 120 s")
    stop(proc)
    return state / "models" / "machines" / "1" / "model.txt"


def appliance_cmd(state: Path) -> list[str]:
    return [sys.executable, "-m", "appliance", "run", "--state-dir", str(state), "--port", "0"]


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread (psutil counts the main thread only)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that just ended
    return total


def idle(proc: subprocess.Popen[bytes], seconds: float) -> dict[str, float]:
    p = psutil.Process(proc.pid)
    time.sleep(2)  # let start-up work (imports, first GC) settle
    cpu0, ctx0, t0 = p.cpu_times(), wakeups(p.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, ctx1, t1 = p.cpu_times(), wakeups(p.pid), time.monotonic()
    wall = t1 - t0
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    mem = p.memory_full_info()
    return {
        "rss_mb": mem.rss / 1e6,
        "uss_mb": mem.uss / 1e6,
        "cpu_pct": 100 * used / wall,
        "wakeups_per_s": (ctx1 - ctx0) / wall,
        "threads": p.num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="idle window for CPU")
    ap.add_argument("--starts", type=int, default=5, help="starts timed for READY=1")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    log = work / "daemon.log"
    listener = Listener(work)
    try:
        state = work / "state"
        print("training the sample model once ...", flush=True)
        model_txt = prepare(state, listener, log)
        floor_py = work / "floor.py"
        floor_py.write_text(FLOOR)
        floor_cmd = [sys.executable, str(floor_py), str(model_txt)]

        ready: dict[str, list[float]] = {"appliance": [], "floor": []}
        for _ in range(args.starts):  # interleaved, so drift in machine load hits both
            for name, cmd in (("appliance", appliance_cmd(state)), ("floor", floor_cmd)):
                proc, took = start(cmd, listener, log)
                if name == "appliance":
                    url = json.loads((state / "daemon.json").read_text())["url"]
                    body = httpx.get(url + "/ready", timeout=5).json()
                    assert body["ready"] and body["models"] == {"machines": 1}, body
                stop(proc)
                ready[name].append(took)

        idle_of: dict[str, dict[str, float]] = {}
        for name, cmd in (("appliance", appliance_cmd(state)), ("floor", floor_cmd)):
            print(f"idle window: {name}, {args.seconds:.0f} s ...", flush=True)
            proc, _ = start(cmd, listener, log)
            idle_of[name] = idle(proc, args.seconds)
            stop(proc)
    finally:
        listener.sock.close()

    a, f = idle_of["appliance"], idle_of["floor"]
    rows = [
        ("start to READY=1 (s, median)", statistics.median(ready["appliance"]),
         statistics.median(ready["floor"]), "< 3"),
        ("idle RSS (MB)", a["rss_mb"], f["rss_mb"], "< 200"),
        ("idle USS (MB)", a["uss_mb"], f["uss_mb"], ""),
        (f"idle CPU over {args.seconds:.0f} s (%)", a["cpu_pct"], f["cpu_pct"], "< 1"),
        ("idle wakeups (/s)", a["wakeups_per_s"], f["wakeups_per_s"], ""),
        ("threads", a["threads"], f["threads"], ""),
    ]
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          "(shared machine: expect noise)")
    print(f"{'':34} {'appliance':>10} {'floor':>10} {'ratio':>7}  target")
    for label, ours, floor, target in rows:
        ratio = f"{ours / floor:.2f}" if floor else "-"
        print(f"{label:34} {ours:10.3f} {floor:10.3f} {ratio:>7}  {target}")
    print("ready times (s): appliance "
          + " ".join(f"{x:.2f}" for x in ready["appliance"])
          + " | floor " + " ".join(f"{x:.2f}" for x in ready["floor"]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
