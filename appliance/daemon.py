"""The daemon: builds the parts, runs them in one process, and stops them cleanly.

The Litestar app runs under uvicorn on the daemon's own event loop; file watching,
ingestion and training run on threads so that serving never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Generator
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


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn only stops when told to.
        yield


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


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


MIN_TOKEN_CHARS = 32  # secrets.token_urlsafe(32) makes 43; anything shorter is not ours


def check_startup(settings: Settings, state: StateDir) -> None:
    """Refuse a start that would expose the API, or trust a damaged token.

    - Listening on a non-loopback address serves predictions to the network: only with a
      token for predict routes (``server.predict_token_required``) or an explicit opt-out
      (``server.allow_open_predict``, logged at every start).
    - A token file readable by others is made private again (0600), with a warning; one
      that is empty or short (truncated, hand-edited) stops the start, because an empty
      token would let an empty ``Authorization: Bearer`` in.
    """
    server = settings.server
    if not is_loopback(server.host):
        if server.predict_token_required:
            pass
        elif server.allow_open_predict:
            log.warning("open_predict host=%s: predictions are served to anyone who can reach "
                        "this address (server.allow_open_predict = true)", server.host)
        else:
            raise StartupError(
                f"refusing to listen on {server.host}: predictions would be open to the "
                "network. Set [server] predict_token_required = true (clients then send "
                "`Authorization: Bearer <state>/predict_token`), or allow_open_predict = "
                "true to accept that anyone who reaches the address can predict"
            )
    for path in (state.token_file, state.predict_token_file):
        if not path.exists():
            continue
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(0o600)
            log.warning("token_mode_fixed file=%s was=%o now=600", path, mode)
        if len(path.read_text().strip()) < MIN_TOKEN_CHARS:
            raise StartupError(
                f"{path} is empty or too short to be a token; delete it and start again to "
                "have a new one made (clients then need the new token)"
            )


class Daemon:
    def __init__(self, settings: Settings, state: StateDir) -> None:
        self.settings = settings
        self.state = state
        self.services = Services.build(settings, state)
        self._ingest_pool = ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self.watcher = InboxWatcher(state, settings.ingest, self._submit_file)
        self.server: _Server | None = None
        self.url: str | None = None

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
        check_startup(self.settings, self.state)
        sock = bind_socket(self.settings.server.host, self.settings.server.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        removed = services.registry.cleanup()
        abandoned = services.store.abandon_running_jobs("the daemon stopped during the job")
        if removed or abandoned:
            log.info("recovered removed=%d abandoned_jobs=%d", len(removed), abandoned)
        await asyncio.to_thread(services.load_production_models)
        if services.predlog is not None:
            services.predlog.start()
        app = create_app(services)
        # What start-up built (libraries, config, models) lives as long as the process: keep
        # it out of the cyclic collector's sweeps, which otherwise pause serving for tens of
        # milliseconds. Swapped-out models are still freed (by reference counting).
        gc.collect()
        gc.freeze()
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False)
        self.server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.watcher.start()
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
        if self.services.predlog is not None:
            self.services.predlog.close()  # serving has stopped: write what is queued
        self.watcher.stop()
        self._ingest_pool.shutdown(wait=True, cancel_futures=False)
        self.services.trainer.shutdown(wait=True)
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


# How long a thread may hold the GIL while another waits for it (CPython's default is 5 ms).
# Ingestion, training and the prediction log run Python on threads beside the event loop;
# at 5 ms a request could wait that long behind them, so a shorter slice keeps the tail of
# prediction latency short for a little more switching.
GIL_SWITCH_INTERVAL = 0.001


def run(settings: Settings, state: StateDir) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    daemon = Daemon(settings, state)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every OS
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(daemon.run())
