"""Idle and slow connections can't take the daemon's file descriptors: beyond
server.max_connections a connection gets a 503 and is closed, one that says nothing is
closed after server.idle_timeout_seconds, a request that trickles in after
server.request_timeout_seconds; the unit raises the open-files limit."""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path

import httpx

from tests.conftest import FAST_CONFIG, ROOT, wait_for

CONFIG = FAST_CONFIG + """
[server]
max_connections = 20
idle_timeout_seconds = 1.0
request_timeout_seconds = 2.0
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def _closed_by_server(s: socket.socket) -> bytes:
    """What the server sent before closing (b"" if nothing); raises if it stays open."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_idle_and_slow_connections_are_bounded_and_closed(state_root: Path, start_daemon):
    (state_root / "appliance.toml").write_text(CONFIG)
    daemon = start_daemon(state_root)
    port = int(daemon.url.rsplit(":", 1)[1])
    pid = daemon.proc.pid
    assert daemon.get("/health").status_code == 200
    daemon.http.close()  # no connection of ours stays open in the count
    time.sleep(1.5)
    before = _fds(pid)

    # 60 clients connect and say nothing: 20 are kept, 40 get a 503 and are closed.
    idle = [_connect(port) for _ in range(60)]
    time.sleep(0.3)
    assert _fds(pid) <= before + 20 + 2
    # (Looked at in one pass, well within the idle timeout: which have been answered.)
    answered, _, _ = select.select(idle, [], [], 0)
    assert len(answered) == 40
    for s in answered:
        got = _closed_by_server(s)
        assert got.startswith(b"HTTP/1.1 503") and b"too_many_connections" in got
    # ... and the kept ones are closed once idle for longer than idle_timeout_seconds.
    started = time.monotonic()
    for s in idle:
        s.settimeout(5)
        assert _closed_by_server(s) == b""
        s.close()
    assert time.monotonic() - started < 3
    wait_for(lambda: _fds(pid) <= before + 1, timeout=5, what="the descriptors to be freed")

    # A request that trickles in (a byte now and then resets the idle timer) is closed
    # after request_timeout_seconds, with a 408.
    slow = [_connect(port) for _ in range(5)]
    head = b"GET /v1/pipelines HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    started = time.monotonic()
    answers: list[bytes] = []
    while slow and time.monotonic() - started < 6:
        for s in list(slow):
            try:
                s.sendall(b"a" if time.monotonic() - started > 0.1 else head)
            except OSError:  # closed by the server: read what it said
                answers.append(_closed_by_server(s))
                slow.remove(s)
                s.close()
        time.sleep(0.25)
    assert not slow, "slow requests were not closed"
    assert 2 <= time.monotonic() - started < 5
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers if a), answers

    # Keep-alive clients that do send requests are unaffected, and the daemon serves on.
    with httpx.Client(base_url=daemon.url, timeout=5) as http:
        for _ in range(3):
            assert http.get("/health").status_code == 200
            time.sleep(0.5)  # under the idle timeout
    assert "connections_refused" in daemon.log()


def test_the_unit_raises_the_open_files_limit():
    unit = (ROOT / "systemd" / "appliance.service").read_text()
    limits = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0].split("=", 1)[1]) >= 8192
