"""``appliance demo``: the whole appliance on its sample data, in a fresh state directory.

The daemon runs as a child process (same process group, its log in ``<state>/daemon.log``)
and the console opens on it, while two threads play the outside world: one drops the
sample files into the inbox over time, one sends prediction requests. Quitting the console
stops the daemon. ``--no-tui`` runs the daemon in the foreground instead, as before.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.core import StateDir, load, logs

PIPELINE = "machines"
# Fed in this order: the machines' metadata (a feature set the pipeline joins) with the
# first batch, which trains version 1; the second retrains, the broken file (no target
# column) is refused, and the last batch has drifted.
FEATURE_SET = "machine_info"
FEED = ["machines_01.csv", "machines_02.csv", "machines_broken.csv",
        "machines_03_drifted.csv"]
DRIFTED = "machines_03_drifted.csv"
DEFAULT_PORT = 8080
TARGET = "failed_within_24h"


def sample_dir() -> Path:
    """The sample data: beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parents[1]  # appliance/
    for candidate in (package.parent / "sample_data", package / "_sample_data"):
        if (candidate / FEED[0]).exists():
            return candidate
    raise FileNotFoundError("the sample data is missing; run sample_data/generate.py")


def drop(state: StateDir, source: Path, folder_name: str = PIPELINE) -> None:
    folder = state.inbox / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{source.name}.part"
    shutil.copyfile(source, tmp)
    tmp.rename(folder / source.name)


def pick_port(port: int | None, host: str = "127.0.0.1") -> int:
    """The port asked for; by default 8080, or any free port when 8080 is taken."""
    if port is not None:
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, DEFAULT_PORT))
        except OSError:
            return 0
    return DEFAULT_PORT


def _rows(path: Path) -> list[dict[str, Any]]:
    import polars as pl

    frame = pl.read_csv(path)
    return frame.drop([c for c in (TARGET,) if c in frame.columns]).to_dicts()


class Demo:
    """The outside world of the demo: files arriving and clients asking for predictions."""

    def __init__(self, root: Path, interval: float, rate: float = 4.0) -> None:
        self.state = StateDir(root.absolute())
        self.interval = interval
        self.rate = rate
        self.samples = sample_dir()
        self.stop_event = threading.Event()
        self.drifted = threading.Event()
        self.daemon: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._log: Any = None
        self.predictions = 0  # answered prediction requests, for the curious and the tests

    @property
    def runfile(self) -> Path:
        return self.state.root / "daemon.json"

    @property
    def log_path(self) -> Path:
        return self.state.root / "daemon.log"

    def prepare(self) -> None:
        self.state.create()
        if not self.state.config.exists():
            shutil.copyfile(self.samples / "appliance.toml", self.state.config)

    def url(self) -> str | None:
        try:
            return json.loads(self.runfile.read_text())["url"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def token(self) -> str:
        return self.state.ensure_token()

    # --- the daemon as a child process -------------------------------------------------

    def start_daemon(self, port: int, timeout: float = 60.0) -> str:
        """Start ``appliance run`` on this state directory; return its URL once it serves."""
        self.runfile.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--state-dir", str(self.state.root),
             "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            url = self.url()
            if url is not None:
                return url
            if self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError("the daemon did not start:\n  " + "\n  ".join(tail))

    # --- the outside world -------------------------------------------------------------

    def start_feeding(self) -> None:
        for target, name in ((self._feed, "demo-feed"), (self._traffic, "demo-traffic")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _feed(self) -> None:
        drop(self.state, self.samples / f"{FEATURE_SET}.csv", FEATURE_SET)
        for i, name in enumerate(FEED):
            if i and self.stop_event.wait(self.interval):
                return
            if name == DRIFTED:
                self.drifted.set()
            drop(self.state, self.samples / name)

    def _traffic(self) -> None:
        """A few prediction requests a second, like the clients of a served model; after the
        drifted batch arrives, the requests drift too."""
        rng = random.Random(7)
        normal = _rows(self.samples / "machines_02.csv")
        drifted = _rows(self.samples / DRIFTED)
        pause = 1.0 / self.rate if self.rate > 0 else None
        if pause is None:
            return
        serving = False
        with httpx.Client(timeout=2.0) as client:
            while not self.stop_event.wait(pause):
                url = self.url()
                if url is None:
                    continue
                if not serving:  # clients start once there is a model to ask, so the
                    try:         # overview's error rate is about predictions, not the wait
                        ready = client.get(f"{url}/ready").json().get("models", {})
                    except (httpx.HTTPError, ValueError, AttributeError):
                        continue
                    serving = PIPELINE in ready
                    if not serving:
                        continue
                pool = drifted if self.drifted.is_set() else normal
                rows = [rng.choice(pool) for _ in range(rng.randint(1, 3))]
                try:
                    resp = client.post(f"{url}/v1/pipelines/{PIPELINE}/predict",
                                       json={"rows": rows})
                except httpx.HTTPError:
                    continue
                if resp.status_code == 200:
                    self.predictions += 1

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the threads and the daemon (SIGTERM, then SIGKILL after ``timeout``)."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=5)
        code = None
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
                try:
                    self.daemon.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            code = self.daemon.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """If the demo is killed outright, its daemon must not live on unseen."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def welcome(interval: float) -> str:
    return (
        f"This is the demo: the sample files arrive one every {interval:.0f} s. "
        "machines_01.csv trains v1, machines_02.csv a retrain, machines_broken.csv is "
        "refused (open the pipeline: its Data tab says why), and machines_03_drifted.csv "
        "has drifted. Prediction requests flow in all along.\n"
        "enter opens a pipeline · ? help · q quits and stops the demo daemon."
    )


def run_demo(state_root: Path | None, port: int | None, interval: float,
             tui: bool = True) -> int:
    root = state_root or Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    demo = Demo(root, interval)
    demo.prepare()
    port = pick_port(port)
    if not tui:
        return _run_headless(demo, port)
    print(f"appliance demo: starting the daemon on {demo.state.root} …", flush=True)
    try:
        url = demo.start_daemon(port)
    except RuntimeError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1
    demo.start_feeding()
    from tui.app import run as run_tui

    try:
        run_tui(url, demo.token(), discover=demo.url, welcome=welcome(interval))
    finally:
        code = demo.stop()
    print(f"appliance demo: stopped (daemon exit {code}). The state is kept in "
          f"{demo.state.root}; the daemon's log is {demo.log_path}.")
    return 0


def _run_headless(demo: Demo, port: int) -> int:
    from appliance.daemon import StartupError, run

    state = demo.state
    settings = load(state.root, None, {"server.port": port})
    logs.setup(settings.log.level)
    shown = f"http://127.0.0.1:{port}" if port else "the URL in <state>/daemon.json"
    example = ('{"rows": [{"timestamp": "2026-03-01T10:00:00", "machine_id": "M-007", '
               '"machine_type": "press", "site": "south", "temperature_c": 71.5, '
               '"vibration_mm_s": 2.9, "pressure_bar": 7.6, "rpm": 1480, '
               '"humidity_pct": 55.0, "hours_since_service": 820.0}]}')
    print(f"""
appliance demo (no TUI)
  state directory: {state.root}
  feeding {', '.join(FEED)} into {state.inbox / PIPELINE}, one every {demo.interval:.0f} s,
  and sending a few prediction requests a second

Once the first file is trained (a few seconds), predict with:

  curl -s {shown}/v1/pipelines/{PIPELINE}/predict -H 'content-type: application/json' \\
       -d '{example}'

  watch it:  appliance tui --state-dir {state.root}   (in another terminal)
  stop it:   Ctrl-C
""", flush=True)
    demo.start_feeding()
    try:
        return run(settings, state)
    except StartupError as exc:
        print(f"appliance: {exc}")
        return 1
    finally:
        demo.stop()

