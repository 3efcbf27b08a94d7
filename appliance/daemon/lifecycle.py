"""The daemon: builds the parts, runs them in one process, and stops them cleanly.

The Litestar app runs under uvicorn on the daemon's own event loop; file watching,
ingestion and training run on threads so that serving never waits for them.

Lifecycle, as systemd sees it (sd_notify, see :mod:`appliance.sdnotify`):

- ``READY=1`` once the API listens and the production models are loaded, with a one-line
  ``STATUS=`` that is kept up to date while running;
- ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``, sent by a task on the event loop itself, so a
  stuck loop stops the pings and systemd restarts the service;
- SIGTERM or SIGINT: ``STOPPING=1``; the listening socket closes, requests in flight finish
  (up to 5 s), no new file is claimed, a running training is cancelled at its next boosting
  round, queued work is left for the next start (it is crash-safe by design), and the
  process exits 0 within :data:`STOP_BUDGET_SECONDS`. A second signal stops waiting;
- SIGHUP: ``RELOADING=1``, the config is read again and what can change live is applied
  (see :data:`LIVE_KEYS`), then ``READY=1``. A broken config is logged and the running one
  kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from appliance.core import (
    ApplianceError,
    ConfigError,
    Settings,
    StateDir,
    logs,
    lower_thread_priority,
)
from appliance.core import load as load_config
from appliance.daemon import sdnotify
from appliance.daemon.connections import ConnectionLimits
from appliance.daemon.services import Services
from appliance.ingest import InboxWatcher
from appliance.jobs import BundleSource
from appliance.serving import create_app

log = logging.getLogger("appliance.daemon")

RETENTION_EVERY_SECONDS = 600.0


# From the first SIGTERM to the exit: requests in flight get up to 5 s (uvicorn's graceful
# timeout), jobs up to this budget; systemd's TimeoutStopSec is above it.
STOP_BUDGET_SECONDS = 8.0

# Settings a SIGHUP applies while running (shell-style patterns over dotted keys). Every other
# key is read once at start, so a change to it is logged as needing a restart.
LIVE_KEYS = ("log.level", "ingest.*", "train.*", "jobs.*", "pipelines.*", "retention.*",
             "server.max_batch_rows", "server.predict_fast_path", "bundles.allow_unsigned",
             "bundles.max_member_mb", "shadow.*", "rollout.watch_seconds", "rollout.z",
             "rollout.min_requests", "rollout.latency_ratio", "rollout.latency_min_ms")

STATUS_SECONDS = 5.0  # how often the STATUS= line is refreshed (sent only when it changed)


class _Server(uvicorn.Server):
    # The connection limits whose slow requests the tick sweeps (set by the daemon).
    limits: ConnectionLimits | None = None

    async def on_tick(self, counter: int) -> bool:
        if self.limits is not None:
            self.limits.sweep(self.server_state.connections)
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn only stops when told to.
        yield

    async def main_loop(self) -> None:
        # uvicorn wakes 10 times a second to look at ``should_exit``; an idle edge box
        # should not. Wake once a second (the Date header's resolution) or when told to stop.
        self.wakeup = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick refreshes the Date header at % 10
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.wakeup.wait()
            should_exit = await self.on_tick(counter)

    def request_exit(self, force: bool = False) -> None:
        self.should_exit = True
        if force:
            self.force_exit = True
        wakeup = getattr(self, "wakeup", None)
        if wakeup is not None:
            wakeup.set()


async def ping_watchdog(interval: float) -> None:
    """``WATCHDOG=1`` every ``interval`` seconds, from the event loop: if the loop is stuck,
    the pings stop and systemd restarts the service."""
    while True:
        sdnotify.watchdog()
        await asyncio.sleep(interval)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The dotted keys whose values differ (a pipeline added or removed counts)."""
    a, b = _flatten(msgspec.to_builtins(old)), _flatten(msgspec.to_builtins(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, a) != b.get(k, b))


def is_live(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in LIVE_KEYS)


def apply_live(current: Settings, new: Settings, keys: list[str]) -> None:
    """Copy the live ``keys`` from ``new`` into ``current`` in place, so every part that
    holds ``current`` (or one of its sections) sees the new values."""
    for key in keys:
        target: Any = current
        source: Any = new
        *path, last = key.split(".")
        for part in path:
            if not isinstance(getattr(target, part), msgspec.Struct):
                last = part  # a table of tables (pipelines): take the whole table
                break
            target, source = getattr(target, part), getattr(source, part)
        setattr(target, last, getattr(source, last))


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
    if not is_loopback(server.host):
        log.info("reads_need_token host=%s: every route but /health, /ready and /schema needs "
                 "Authorization: Bearer with %s (or the predict or admin token)", server.host,
                 state.read_token_file)
    for path in (state.token_file, state.predict_token_file, state.read_token_file):
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
    def __init__(self, settings: Settings, state: StateDir,
                 reload_settings: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self.state = state
        self.services = Services.build(settings, state)
        self._ingest_pool = ThreadPoolExecutor(1, thread_name_prefix="ingest",
                                               initializer=lower_thread_priority)
        self._ingest_futures: set[Future[None]] = set()
        self._ingest_lock = threading.Lock()
        self.watcher = InboxWatcher(state, settings.ingest, self._submit_file,
                                    events=self.services.events)
        self.services.ingester.on_requeued = self.watcher.hold
        self.server: _Server | None = None
        self.url: str | None = None
        # SIGHUP re-reads the config this way (the CLI passes its --config and flags).
        self._reload_settings = reload_settings or (lambda: load_config(state.root))
        # Called after a reload applied live keys, with those keys.
        self.on_reload: list[Callable[[list[str]], None]] = [self._reschedule]
        self._stop_deadline: float | None = None
        self._jobs_stopped: asyncio.Future[bool] | None = None
        self.abandoned_jobs = False
        self._last_status = ""
        # Every periodic job runs on APScheduler (the loop's thread pool), one method each.
        monitor, cfg, every = self.services.monitor, settings.monitor, self.services.scheduler.every
        every("monitor:flush", "flush request windows", monitor.flush_windows,
              min(5.0, cfg.window_seconds / 2))
        every("monitor:resources", "sample resources", monitor.sample_resources,
              cfg.resource_interval_seconds, at_start=True)
        every("monitor:retention", "apply retention", monitor.apply_retention,
              RETENTION_EVERY_SECONDS, at_start=True)
        every("housekeeping:retention", "remove old data, models, files and records",
              self.services.housekeeping.apply_retention, RETENTION_EVERY_SECONDS,
              at_start=True)
        every("monitor:drift", "drift check", monitor.drift_check_all,
              settings.drift.interval_seconds)
        every("monitor:performance", "live performance check", monitor.performance_check_all,
              cfg.performance_interval_seconds)
        if settings.bundles.source and self.services.importer is not None:
            source = BundleSource(self.services.store, self.services.events, settings,
                                  self.services.importer, self.services.pipeline_names)
            every("bundles:source", "poll the bundle source", source.poll,
                  settings.bundles.poll_seconds, at_start=True)
        if self.services.shadows is not None:
            every("shadow:check", "shadow scoring: write its numbers, decide when it can",
                  self.services.shadows.check_all, min(5.0, settings.shadow.window_seconds))
        if self.services.rollout is not None:
            every("rollout:check", "health of a newly promoted version (rollback)",
                  self.services.rollout.check_all, settings.rollout.check_seconds)

    def _submit_file(self, path: Path, pipeline: str) -> None:
        with self._ingest_lock:
            future = self._ingest_pool.submit(self._ingest, path, pipeline)
            self._ingest_futures.add(future)
        future.add_done_callback(self._ingest_done)

    def _ingest_done(self, future: Future[None]) -> None:
        with self._ingest_lock:
            self._ingest_futures.discard(future)

    def _ingest(self, path: Path, pipeline: str) -> None:
        try:
            self.services.ingester.process(path, pipeline)
        except ApplianceError as err:
            log.error("ingest_failed file=%s error=%s", path, err.message)
        except Exception:
            log.exception("ingest_crashed file=%s", path)

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop taking requests and work; finish or stop what runs."""
        if self._stop_deadline is not None:
            # A second signal: stop waiting for connections and jobs.
            log.warning("stop_forced")
            self._stop_deadline = time.monotonic()
            if self.server is not None:
                self.server.request_exit(force=True)
            return
        self._stop_deadline = time.monotonic() + STOP_BUDGET_SECONDS
        sdnotify.stopping("stopping: finishing requests in flight, stopping jobs")
        logs.event(log, logging.INFO, "stopping", pid=os.getpid())
        if self.server is not None:
            self.server.request_exit()
        self.services.trainer.stop()
        self._jobs_stopped = asyncio.get_running_loop().run_in_executor(None, self._stop_jobs)

    def _stop_jobs(self) -> bool:
        """Stop claiming files and cancel training, then wait for the work in hand until the
        deadline; True when nothing is left running."""
        self.watcher.stop()
        self._ingest_pool.shutdown(wait=False, cancel_futures=True)
        while True:
            with self._ingest_lock:
                ingests = set(self._ingest_futures)
            _, pending = wait_futures(ingests, timeout=0.05)
            if not pending and self.services.trainer.join(0.05):
                return True
            # Re-read each time: a second signal moves the deadline to now.
            if time.monotonic() >= (self._stop_deadline or 0.0):
                return False

    def _reschedule(self, keys: list[str]) -> None:
        """Cron schedules and retry settings come from the config: rebuild the jobs."""
        if any(k.startswith(("pipelines.", "jobs.")) for k in keys):
            self.services.scheduler.configure(self.settings)

    def reload(self) -> bool:
        """SIGHUP: read the config again and apply what can change live. Returns whether
        the new config was taken; a broken one is logged and the running one kept."""
        if self._stop_deadline is not None:
            log.info("reload_ignored reason=stopping")
            return False
        # Before READY=1 (models still loading) systemd must not hear READY=1 from a reload.
        notify = self.services.started
        if notify:
            sdnotify.reloading("reloading the config")
        try:
            new = self._reload_settings()
        except ConfigError as exc:
            message = f"{exc}; the running config is kept"
            self.services.events.emit("config_reload_failed", message, level="error")
            if notify:
                sdnotify.ready(self.status_line())
            return False
        keys = changed_keys(self.settings, new)
        live = [k for k in keys if is_live(k)]
        restart = [k for k in keys if not is_live(k)]
        apply_live(self.settings, new, live)
        if "log.level" in live:
            logs.set_level(self.settings.log.level)
        for hook in self.on_reload:
            try:
                hook(live)
            except Exception:
                log.exception("reload_hook_failed hook=%r", hook)
        message = f"applied {', '.join(live)}" if live else "nothing that can change live changed"
        if restart:
            message += (f"; {', '.join(restart)} changed but take(s) effect only after a "
                        "restart (systemctl restart appliance)")
        self.services.events.emit(
            "config_reloaded", message, level="warning" if restart else "info",
            applied=live or None, needs_restart=restart or None,
        )
        if notify:
            sdnotify.ready(self.status_line())
        return True

    def status_line(self) -> str:
        """The one line ``systemctl status`` shows."""
        services = self.services
        served = services.live.versions()
        names = services.pipeline_names()
        text = f"{len(names)} pipeline{'s' if len(names) != 1 else ''}, "
        text += f"{len(served)} model{'s' if len(served) != 1 else ''} served"
        if served:
            shown = [f"{p} v{v}" for p, v in sorted(served.items())]
            text += " (" + ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "") + ")"
        training = [n for n in names if services.trainer.busy(n)]
        if training:
            text += f"; training {', '.join(training[:5])}"
        if services.load_failures:
            text += f"; {len(services.load_failures)} failed to load"
        return f"{text}; API {self.url}"

    async def _refresh_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            try:
                line = self.status_line()
            except Exception:
                log.debug("status_line_failed", exc_info=True)
                continue
            if line != self._last_status:
                self._last_status = line
                sdnotify.status(line)

    async def run(self) -> int:
        services = self.services
        check_startup(self.settings, self.state)
        sock = bind_socket(self.settings.server.host, self.settings.server.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        loop = asyncio.get_running_loop()
        # Signals are ours from here on, so a SIGTERM while models load still stops cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        background: list[asyncio.Task[None]] = []
        interval = sdnotify.watchdog_interval()
        if interval:
            background.append(asyncio.create_task(ping_watchdog(interval)))
        removed = services.registry.cleanup()
        abandoned = services.store.abandon_running_jobs("the daemon stopped during the job")
        if removed or abandoned:
            log.info("recovered removed=%d abandoned_jobs=%d", len(removed), len(abandoned))
        # A training the process died in counts as a failed attempt (backoff, then give up),
        # so a run that kills the daemon (out of memory, say) can't restart it for ever.
        services.trainer.count_interrupted([p for p, kind in abandoned if kind == "train"])
        sdnotify.status("loading models")
        await asyncio.to_thread(services.load_production_models)
        if services.shadows is not None:
            await asyncio.to_thread(services.shadows.resume)
        if services.predlog is not None:
            services.predlog.start()
        app = create_app(services)
        # What start-up built (libraries, config, models) lives as long as the process: keep
        # it out of the cyclic collector's sweeps, which otherwise pause serving for tens of
        # milliseconds. Swapped-out models are still freed (by reference counting).
        gc.collect()
        gc.freeze()
        # Connections: a cap (under the open-files limit), idle and slow ones closed.
        limits = ConnectionLimits(self.settings.server)
        limits.fit_open_files()
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False,
                                http=limits.protocol(),
                                timeout_keep_alive=self.settings.server.idle_timeout_seconds)
        self.server = _Server(config)
        self.server.limits = limits
        serving: asyncio.Task[None] | None = None
        if self._stop_deadline is None:  # no signal came while the models loaded
            self.watcher.start()
            services.scheduler.start()
            serving = asyncio.create_task(self.server.serve(sockets=[sock]))
            while not self.server.started and not serving.done():
                await asyncio.sleep(0.01)
        if self.server.started and self._stop_deadline is None:
            services.started = True
            self._write_runfile()
            services.events.emit("started", f"serving on {self.url}", url=self.url,
                                 pid=os.getpid())
            self._last_status = self.status_line()
            sdnotify.ready(self._last_status)
            if sdnotify.enabled():
                background.append(asyncio.create_task(self._refresh_status()))
            # What a stop, a crash or a power cut left undone trains now (off the loop).
            await asyncio.to_thread(self._resume_training)
        try:
            if serving is not None:
                await serving
        finally:
            services.scheduler.shutdown()
            if self._jobs_stopped is None:  # serving ended without a signal
                self._stop_deadline = time.monotonic() + STOP_BUDGET_SECONDS
                self.services.trainer.stop()
                self._jobs_stopped = loop.run_in_executor(None, self._stop_jobs)
            finished = await self._jobs_stopped
            await asyncio.to_thread(self._shutdown, finished)
            for task in background:
                task.cancel()
            sock.close()
        return 0

    def _resume_training(self) -> None:
        try:
            self.services.trainer.resume()
        except Exception:
            log.exception("training_resume_failed")

    def _shutdown(self, finished: bool = True) -> None:
        # Metrics and other buffers are flushed here, before the store closes.
        if self.services.predlog is not None:
            self.services.predlog.close()  # serving has stopped: write what is queued
        if self.services.shadows is not None:
            try:
                self.services.shadows.close()
            except Exception:
                log.exception("shadow_close_failed")
        try:
            self.services.monitor.flush_windows(force=True)
        except Exception:
            log.exception("flush_failed")
        if self.services.rollout is not None:
            try:
                self.services.rollout.save_all()  # the next start resumes the watch
            except Exception:
                log.exception("rollout_save_failed")
        if finished:
            self.services.events.emit("stopped", "stopped cleanly")
        else:
            # A job outlived the budget. Its work is crash-safe (a claimed file is ingested
            # again, a half-written model is removed and the job marked at the next start),
            # so the process leaves it rather than overrun systemd's stop timeout.
            self.abandoned_jobs = True
            self.services.ingester.interrupted()  # a stop, not a crash on the file
            self.services.events.emit(
                "stopped", f"stopped; a job still running after {STOP_BUDGET_SECONDS:.0f} s "
                "was left to be redone at the next start", level="warning")
        with contextlib.suppress(FileNotFoundError):
            (self.state.root / "daemon.json").unlink()
        if finished:
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


def start_polars_pool_niced() -> None:
    """Create Polars' thread pool from a thread at a lower CPU priority, so its threads
    (which inherit it) never outrank the event loop: ingestion and training keep every
    core when the box is idle, and give way to requests under load. Polars creates the
    pool on its first parallel operation, so this runs before any."""
    import polars as pl

    def warm() -> None:
        lower_thread_priority()
        pl.DataFrame({"a": list(range(64))}).lazy().select(pl.col("a").sum()).collect()

    thread = threading.Thread(target=warm, name="polars-pool")
    thread.start()
    thread.join()


def run(settings: Settings, state: StateDir,
        reload_settings: Callable[[], Settings] | None = None) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    start_polars_pool_niced()
    daemon = Daemon(settings, state, reload_settings)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every OS
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(daemon.run())
    if daemon.abandoned_jobs:
        # The job threads can't be interrupted and would hold the interpreter open.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code
