"""Every box of the fleet, polled over its HTTP API: one asyncio task per box, so a slow or
dead box never holds up the others (nor the screen, which only reads the states).

A box that does not answer is ``down`` since the first failed poll, and is asked again
with a growing pause (the refresh period, doubled per failure, up to ``max_backoff``). A
box that answers but refuses (it did not prove it holds the token, a wrong token, an odd
answer) is ``refused`` with the reason, polled the same way. No Textual here: the CLI's
``status --fleet`` runs one round of the same polls.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from appliance.api_types import EventInfo, PipelineSummary, ResourceSample
from tui.client import ApiError, ApplianceClient, DaemonUnavailable, NotAvailable, gather
from tui.fleet.config import FleetBox

EVENTS_PER_BOX = 5
SYSTEM_SECONDS = 30.0  # the resource samples asked for: the newest is shown


@dataclass
class BoxState:
    """What the console knows of one box."""

    box: FleetBox
    state: str = "connecting"  # connecting | up | down | refused
    reason: str = ""  # why it is down or refused
    since: datetime | None = None  # down or refused since (the first failed poll)
    last_ok: datetime | None = None  # the last answer
    failures: int = 0  # polls in a row that failed
    next_poll_s: float = 0.0  # the pause before the next poll
    pipelines: list[PipelineSummary] = field(default_factory=list)
    system: ResourceSample | None = None
    system_note: str = ""  # why there are no resources (an older daemon)
    events: list[EventInfo] = field(default_factory=list)  # newest first
    version: int = 0  # bumped on every change the screen should draw

    @property
    def name(self) -> str:
        return self.box.name


_SSL: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """One SSL context for every box (httpx's default: certifi's CA bundle), built once."""
    global _SSL
    if _SSL is None:
        _SSL = httpx.create_ssl_context()
    return _SSL


def box_client(box: FleetBox, timeout: float, *, admin: bool = False,
               transport: httpx.AsyncBaseTransport | None = None) -> ApplianceClient:
    """A client of one box: reads send its ``token`` (else its admin token, as the
    single-box console does), actions its admin token (when ``admin``: the box's own
    screens); each only after the box proved it holds that token."""
    return ApplianceClient(box.url, box.admin_token if admin else None, timeout=timeout,
                           transport=transport, read_token=box.token or box.admin_token,
                           check_reads=True,
                           user_agent="appliance-fleet", verify=ssl_context())


class FleetPoller:
    """Polls every box every ``refresh`` seconds (a failed box with backoff). The states
    are read by whoever draws them (each bumps ``version`` when polled)."""

    def __init__(self, boxes: list[FleetBox], *, refresh: float = 5.0, timeout: float = 3.0,
                 max_backoff: float = 60.0,
                 clock: Callable[[], datetime] | None = None,
                 transports: dict[str, httpx.AsyncBaseTransport] | None = None) -> None:
        self.refresh = refresh
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.clock = clock or (lambda: datetime.now(UTC))
        self.states = {b.name: BoxState(b) for b in boxes}
        self._clients = {b.name: box_client(b, timeout,
                                            transport=(transports or {}).get(b.name))
                         for b in boxes}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: dict[str, asyncio.Event] = {}

    # --- one poll ----------------------------------------------------------------------

    async def poll(self, name: str) -> BoxState:
        """Ask one box once; never raises for what the box does or doesn't answer."""
        state, client = self.states[name], self._clients[name]

        async def system() -> SystemResponseOrNote:
            try:
                return (await client.system(seconds=SYSTEM_SECONDS)).samples
            except NotAvailable:
                return "resources not available from this daemon yet"

        try:
            # Bounded as a whole: a box that accepts and then trickles is down, not slow.
            async def ask() -> list[object]:
                await client.prove_reads()  # one identity check, before any token is sent
                return await gather(client.pipelines(), client.events(limit=EVENTS_PER_BOX),
                                    system())

            pipelines, events, samples = await asyncio.wait_for(ask(), self.timeout * 2)
        except (DaemonUnavailable, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, DaemonUnavailable) else "no answer in time"
            self._failed(state, "down", reason)
        except ApiError as exc:
            # "http://box:8080 did not prove ...": the box is named on its row already.
            message = exc.message.removeprefix(f"{state.box.url} ")
            self._failed(state, "refused", f"{message} ({exc.code})")
        except Exception as exc:  # an answer this console can't read: told, not raised
            self._failed(state, "refused", f"{type(exc).__name__}: {exc}")
        else:
            state.state, state.reason, state.since = "up", "", None
            state.failures = 0
            state.last_ok = self.clock()
            state.next_poll_s = self.refresh
            state.pipelines = pipelines.pipelines
            state.events = events.events[:EVENTS_PER_BOX]
            if isinstance(samples, str):
                state.system, state.system_note = None, samples
            else:
                state.system = samples[-1] if samples else None
                state.system_note = "" if samples else "no resource samples yet"
        state.version += 1
        return state

    def _failed(self, state: BoxState, kind: str, reason: str) -> None:
        if state.state != kind:
            state.since = self.clock()
        state.state, state.reason = kind, reason
        state.failures += 1
        state.next_poll_s = min(self.refresh * 2 ** state.failures, self.max_backoff)

    async def poll_all(self) -> list[BoxState]:
        """Every box once, all at the same time (``status --fleet``)."""
        return list(await asyncio.gather(*(self.poll(n) for n in self.states)))

    # --- for ever ----------------------------------------------------------------------

    async def _loop(self, name: str) -> None:
        wake = self._wake[name] = asyncio.Event()
        while True:
            started = time.monotonic()
            state = await self.poll(name)
            pause = state.next_poll_s - (time.monotonic() - started)
            wake.clear()
            if pause > 0:
                try:
                    await asyncio.wait_for(wake.wait(), pause)
                except TimeoutError:
                    pass

    def start(self) -> None:
        """One task per box, on the running loop."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._loop(n), name=f"fleet poll {n}")
                           for n in self.states]

    def poll_now(self) -> None:
        """Ask every box again now, the failed ones too (``ctrl+r``)."""
        for wake in self._wake.values():
            wake.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(c.aclose() for c in self._clients.values()),
                             return_exceptions=True)


SystemResponseOrNote = list[ResourceSample] | str


def box_summary(state: BoxState, now: datetime) -> dict[str, object]:
    """One box as plain data (``status --fleet --json``)."""
    sample = state.system
    return {
        "name": state.name, "url": state.box.url, "state": state.state,
        "reason": state.reason or None,
        "since": state.since.isoformat() if state.since else None,
        "down_seconds": (round((now - state.since).total_seconds(), 1)
                         if state.since else None),
        "last_ok": state.last_ok.isoformat() if state.last_ok else None,
        "pipelines": [{
            "name": p.name, "status": p.status, "production_version": p.production_version,
            "serving_version": p.serving_version, "drift_status": p.drift_status,
            "drift_summary": p.drift_summary, "drift_share": p.drift_share,
            "drift_importance_share": p.drift_importance_share, "error_rate": p.error_rate,
            "p99_ms": p.p99_ms, "requests_per_s": p.requests_per_s,
            "last_ingestion": p.last_ingestion, "held": p.held,
        } for p in state.pipelines],
        "memory_percent": sample.memory_percent if sample else None,
        "memory_available_bytes": sample.memory_available_bytes if sample else None,
        "disk_free_bytes": sample.disk_free_bytes if sample else None,
        "cpu_percent": sample.cpu_percent if sample else None,
        "events": [{"id": e.id, "ts": e.ts, "kind": e.kind, "level": e.level,
                    "pipeline": e.pipeline, "message": e.message} for e in state.events],
    }
