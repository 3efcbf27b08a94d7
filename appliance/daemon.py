"""The daemon: builds the parts, runs them in one process, and stops them cleanly.

The Litestar app runs under uvicorn on the daemon's own event loop; file watching,
ingestion and training run on threads so that serving never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.ingest import InboxWatcher
from appliance.serve import create_app
from appliance.services import Services
from appliance.statedir import StateDir

log = logging.getLogger("appliance.daemon")

RETENTION_EVERY_SECONDS = 600.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn only stops when told to.
        yield


class Every:
    """Runs jobs on one thread, each at its own interval, until stopped; a job that fails
    is logged and runs again at its next turn. (The scheduler issue moves these onto
    APScheduler; each job is one method of the monitor.)"""

    def __init__(self, name: str, jobs: list[tuple[float, Callable[[], object], bool]]) -> None:
        self.name = name
        self.jobs = jobs  # (interval seconds, job, run at start)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        now = time.monotonic()
        due = [now if at_start else now + every for every, _, at_start in self.jobs]
        while True:
            wait = max(0.0, min(due) - time.monotonic())
            if self._stop.wait(wait):
                return
            for i, (every, job, _) in enumerate(self.jobs):
                if self._stop.is_set():
                    return
                if time.monotonic() >= due[i]:
                    try:
                        job()
                    except Exception:
                        log.exception("job_failed thread=%s job=%s", self.name,
                                      getattr(job, "__name__", job))
                    due[i] = time.monotonic() + every


class StartupError(Exception):
    """The daemon can't start; the message says why and what to do."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use; stop what uses it or start with "
                "--port N (or [server] port in appliance.toml)"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Daemon:
    def __init__(self, settings: Settings, state: StateDir) -> None:
        self.settings = settings
        self.state = state
        self.services = Services.build(settings, state)
        self._ingest_pool = ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self.watcher = InboxWatcher(state, settings.ingest, self._submit_file)
        self.server: _Server | None = None
        self.url: str | None = None
        monitor, cfg = self.services.monitor, settings.monitor
        # Cheap and frequent on one thread; drift, feedback and retention on another, so a
        # slow check never delays the samples.
        self.monitor_jobs = [
            Every("monitor", [
                (min(5.0, cfg.window_seconds / 2), monitor.flush_windows, False),
                (cfg.resource_interval_seconds, monitor.sample_resources, True),
            ]),
            Every("monitor-checks", [
                (RETENTION_EVERY_SECONDS, monitor.apply_retention, True),
                (settings.drift.interval_seconds, monitor.drift_check_all, False),
                (cfg.performance_interval_seconds, monitor.performance_check_all, False),
            ]),
        ]

    def _submit_file(self, path: Path, pipeline: str) -> None:
        self._ingest_pool.submit(self._ingest, path, pipeline)

    def _ingest(self, path: Path, pipeline: str) -> None:
        try:
            self.services.ingester.process(path, pipeline)
        except ApplianceError as err:
            log.error("ingest_failed file=%s error=%s", path, err.message)
        except Exception:
            log.exception("ingest_crashed file=%s", path)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True

    async def run(self) -> int:
        services = self.services
        sock = bind_socket(self.settings.server.host, self.settings.server.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        removed = services.registry.cleanup()
        abandoned = services.store.abandon_running_jobs("the daemon stopped during the job")
        if removed or abandoned:
            log.info("recovered removed=%d abandoned_jobs=%d", len(removed), abandoned)
        await asyncio.to_thread(services.load_production_models)
        app = create_app(services)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False)
        self.server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.watcher.start()
        for jobs in self.monitor_jobs:
            jobs.start()
        serving = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started and not serving.done():
            await asyncio.sleep(0.01)
        if self.server.started:
            services.started = True
            self._write_runfile()
            services.events.emit("started", f"serving on {self.url}", url=self.url,
                                 pid=os.getpid())
        try:
            await serving
        finally:
            await asyncio.to_thread(self._shutdown)
            sock.close()
        return 0

    def _shutdown(self) -> None:
        self.watcher.stop()
        self._ingest_pool.shutdown(wait=True, cancel_futures=False)
        self.services.trainer.shutdown(wait=True)
        for jobs in self.monitor_jobs:
            jobs.stop()
        try:
            self.services.monitor.flush_windows(force=True)
        except Exception:
            log.exception("flush_failed")
        self.services.events.emit("stopped", "stopped cleanly")
        with contextlib.suppress(FileNotFoundError):
            (self.state.root / "daemon.json").unlink()
        self.services.store.close()

    def _write_runfile(self) -> None:
        """``daemon.json`` tells local tools (status, tui) where the API is."""
        path = self.state.root / "daemon.json"
        tmp = path.with_name(".daemon.json.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "url": self.url}))
        os.replace(tmp, path)


def run(settings: Settings, state: StateDir) -> int:
    daemon = Daemon(settings, state)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every OS
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(daemon.run())
