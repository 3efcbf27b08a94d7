"""How many connections the API keeps open, and for how long: a client that connects and
says nothing, or sends its request a byte at a time, must not hold a file descriptor for
ever, and many of them must not take every descriptor the process has (the database, the
drop folder and the models need some).

uvicorn alone keeps a connection as long as its client likes until the first request
begins (its keep-alive timeout starts only after a response, and any byte resets it), and
its ``limit_concurrency`` answers 503 only once a request arrives, the descriptor already
taken. So the HTTP protocol here (uvicorn's own, with three additions):

- beyond ``server.max_connections`` open connections, a new one gets a 503 at once and is
  closed (a warning in the log, at most every 10 s, with how many were refused);
- a connection that sends nothing is closed after ``server.idle_timeout_seconds``, as an
  idle keep-alive connection is;
- a request must arrive whole (its headers and body) within
  ``server.request_timeout_seconds`` of its first byte, else the connection is closed
  (with a 408 when nothing was answered yet): :meth:`ConnectionLimits.sweep`, once a
  second from the server's tick, not a timer per request.

A response's writes go out in one system call (:class:`CoalescingTransport`). And at start
the process's soft limit of open files is raised to its hard limit (systemd's
``LimitNOFILE``), and the connection cap kept under it with room to spare.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from appliance.api_types import ErrorBody
from appliance.core import ServerSettings
from appliance.core.logs import event as log_event

log = logging.getLogger("appliance.daemon")

# Descriptors kept for everything but connections: SQLite (and its WAL), the drop folder's
# watch and files, models, Parquet files, the logs, Python's own.
RESERVED_FDS = 256
WARN_EVERY = 10.0  # seconds between two warnings about refused connections


def _answer(status: int, reason: str, body: ErrorBody, extra: bytes = b"") -> bytes:
    payload = msgspec.json.encode(body)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n").encode() + extra + (
        b"\r\n" + payload)


class CoalescingTransport:
    """A connection's transport whose writes of one turn of the event loop go out as one:
    uvicorn writes a response's head and its body separately, two ``send`` system calls
    (and two TCP segments) for a small answer, the largest share of the event loop's time
    under a load of single-row predictions (measured with py-spy). The writes are joined
    and sent once, when the loop next runs its callbacks, before it reads new requests.
    Closing sends what is pending first; everything else is the transport's own."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            pending.append(data)

    def _flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ConnectionLimits:
    """The limits of one server, and what they did (counted for the log and tests)."""

    def __init__(self, server: ServerSettings) -> None:
        self.requested = server.max_connections
        self.max_connections = server.max_connections
        self.request_timeout = server.request_timeout_seconds
        self.refused = 0
        self.timed_out = 0
        self._warned_at = 0.0
        self._warned_refused = 0
        self._too_many = _answer(503, "Service Unavailable", ErrorBody(
            code="too_many_connections",
            message=f"the appliance has {server.max_connections} connections open "
                    "(server.max_connections); retry shortly, and reuse connections",
            details={"limit": server.max_connections}), b"retry-after: 1\r\n")
        self._too_slow = _answer(408, "Request Timeout", ErrorBody(
            code="request_timeout",
            message=f"the request did not arrive whole within "
                    f"{server.request_timeout_seconds:g} s (server.request_timeout_seconds)",
            details={"limit_seconds": server.request_timeout_seconds}))

    def fit_open_files(self) -> int:
        """Raise the soft limit of open files to the hard one, and keep the cap of
        connections under what is then allowed, with :data:`RESERVED_FDS` to spare.
        Returns the cap."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
            try:
                wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (OSError, ValueError) as exc:  # a sandbox may forbid it: keep the soft one
                log.info("open_files_limit_kept soft=%s hard=%s (%s)", soft, hard, exc)
        if soft != resource.RLIM_INFINITY:
            room = max(16, int(soft) - RESERVED_FDS)
            if room < self.max_connections:
                log_event(log, logging.WARNING, "connections_capped",
                          max_connections=self.max_connections, now=room, open_files=soft,
                          hint="raise the open-files limit (LimitNOFILE in the unit, "
                               "ulimit -n) or lower server.max_connections")
                self.max_connections = room
        return self.max_connections

    def refuse(self, transport: Any) -> None:
        self.refused += 1
        transport.write(self._too_many)
        transport.close()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            log_event(log, logging.WARNING, "connections_refused",
                      refused=self.refused - self._warned_refused, total=self.refused,
                      max_connections=self.max_connections,
                      hint="clients should reuse keep-alive connections; or raise "
                           "server.max_connections")
            self._warned_at, self._warned_refused = now, self.refused

    def sweep(self, connections: Any, now: float | None = None) -> int:
        """Close every connection whose request has been arriving for longer than the
        request timeout; returns how many. Called once a second."""
        now = time.monotonic() if now is None else now
        closed = 0
        for proto in list(connections):
            began = getattr(proto, "request_began", None)
            if began is None or now - began <= self.request_timeout:
                continue
            proto.request_began = None
            transport = getattr(proto, "transport", None)
            if transport is None or transport.is_closing():
                continue
            cycle = getattr(proto, "cycle", None)
            if cycle is None or not cycle.response_started:
                transport.write(self._too_slow)
            transport.close()
            closed += 1
        self.timed_out += closed
        return closed

    def protocol(self) -> type[HttpToolsProtocol]:
        """uvicorn's HTTP protocol (httptools) under these limits."""
        limits = self

        class LimitedHttpProtocol(HttpToolsProtocol):
            request_began: float | None = None

            def connection_made(self, transport: Any) -> None:
                super().connection_made(CoalescingTransport(transport, self.loop))
                if len(self.connections) > limits.max_connections:
                    limits.refuse(transport)
                    return
                # Idle from the start: closed as an idle keep-alive connection is (the
                # first byte cancels it, as after a response).
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)

            def on_message_begin(self) -> None:
                super().on_message_begin()
                self.request_began = time.monotonic()

            def on_message_complete(self) -> None:
                self.request_began = None
                super().on_message_complete()

        return LimitedHttpProtocol
