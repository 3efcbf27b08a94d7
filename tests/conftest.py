"""Fixtures that run the real appliance: a state directory, and the daemon as a process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"

FAST_CONFIG = """
[ingest]
settle_seconds = 0.2
rescan_seconds = 1.0

[pipelines.machines]
target = "failed_within_24h"
timestamp = "timestamp"
id = "reading_id"
"""


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    root.mkdir()
    return root


@pytest.fixture
def machines_state(state_root: Path) -> Path:
    """A state dir configured for the sample pipeline `machines`, with a short settle time."""
    (state_root / "appliance.toml").write_text(FAST_CONFIG)
    return state_root


def drop(state_root: Path, pipeline: str, source: Path, name: str | None = None) -> Path:
    """Drop a file into the inbox the way a careful writer does (write, then rename)."""
    folder = state_root / "inbox" / pipeline
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (name or source.name)
    tmp = folder / f".{final.name}.part"
    shutil.copyfile(source, tmp)
    os.replace(tmp, final)
    return final


def binary_csv(path: Path, rows: int, features: int = 6, seed: int = 0) -> Path:
    """A seeded binary data set of ``features`` normal columns f0.. whose target follows f0
    with noise, written as CSV at ``path``."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(features)}).with_columns(
        target=pl.Series((x[:, 0] + rng.normal(size=rows) > 0).astype(np.int64)))
    frame.write_csv(path)
    return path


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.1,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class DaemonProcess:
    def __init__(self, state_root: Path, args: list[str],
                 prefix: list[str] | None = None, log_dir: Path | None = None) -> None:
        """``log_dir``: where the daemon's output goes (beside the state directory unless
        told; a test that fills the state's disk keeps it elsewhere, as journald would)."""
        self.state_root = state_root
        runfile = state_root / "daemon.json"
        runfile.unlink(missing_ok=True)
        self.log_path = (log_dir or state_root.parent) / f"daemon-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "appliance", "run",
             "--state-dir", str(state_root), "--port", "0", *args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: runfile.exists() or self.proc.poll() is not None, timeout=60,
                 what="the daemon to start")
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
        self.url = json.loads(runfile.read_text())["url"]
        self.token = (state_root / "token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.http.get(path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, admin: bool = False, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if admin else {}
        return self.http.post(path, headers=headers, **kw)  # type: ignore[arg-type]

    def wait_ready_model(self, pipeline: str, version: int = 1, timeout: float = 90) -> None:
        def ok() -> bool:
            r = self.get("/ready")
            return r.status_code == 200 and r.json()["models"].get(pipeline, 0) >= version
        wait_for(ok, timeout=timeout, what=f"{pipeline} v{version} to be served")

    def wait_jobs_closed(self, pipeline: str, count: int, timeout: float = 90) -> list[dict]:
        """The pipeline's job history, oldest first, once `count` jobs exist and none is
        running. A new version is served before its job row is closed (the swap is part of
        the job), so a test that saw the model go live waits here before reading jobs."""
        def closed() -> list[dict] | None:
            resp = self.get(f"/v1/pipelines/{pipeline}/jobs")
            h = resp.json()["history"][::-1] if resp.status_code == 200 else []
            return h if len(h) >= count and all(j["status"] != "running" for j in h) else None
        return wait_for(closed, timeout=timeout,  # type: ignore[return-value]
                        what=f"{count} {pipeline} jobs to close")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(state_root: Path, *args: str,
              prefix: list[str] | None = None) -> DaemonProcess:
        d = DaemonProcess(state_root, list(args), prefix)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop(signal.SIGKILL if d.proc.poll() is None else signal.SIGTERM)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir where the sample pipeline `machines` has v1 in production, made once per
    session by the real daemon; copy it (``copy_state``) before starting a daemon on it."""
    root = tmp_path_factory.mktemp("trained") / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(FAST_CONFIG)
    daemon = DaemonProcess(root, [])
    try:
        drop(root, "machines", SAMPLES / "machines_01.csv")
        daemon.wait_ready_model("machines", 1)
    finally:
        assert daemon.stop() == 0, daemon.log()
    return root


def copy_state(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest
