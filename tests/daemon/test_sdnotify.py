"""sd_notify against a real AF_UNIX datagram socket, the way systemd listens."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time

import pytest

from appliance.daemon import sdnotify
from appliance.daemon.lifecycle import ping_watchdog
from tests.daemon.notify import NotifyListener


@pytest.fixture
def listener(tmp_path, monkeypatch):
    sd = NotifyListener(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sd.path))
    yield sd
    sd.close()


def test_nothing_happens_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.enabled()
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog_interval() is None


def test_each_message_as_systemd_receives_it(listener):
    assert sdnotify.ready("2 pipelines,\n1 model served")
    assert sdnotify.status("training  machines")
    assert sdnotify.watchdog()
    assert sdnotify.stopping()
    assert sdnotify.extend_timeout(1.5)
    listener.wait_for("EXTEND_TIMEOUT_USEC=")
    assert listener.texts() == [
        "READY=1\nSTATUS=2 pipelines, 1 model served",  # one line, whatever it was given
        "STATUS=training machines",
        "WATCHDOG=1",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=1500000",
    ]


def test_reloading_carries_the_monotonic_clock(listener):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    _, message = listener.wait_for("RELOADING=1")
    lines = dict(line.split("=", 1) for line in message.split("\n"))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(lines["MONOTONIC_USEC"]) <= after


def test_abstract_socket(monkeypatch):
    name = f"appliance-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(100) == b"READY=1"


@pytest.mark.parametrize("value", ["/nonexistent/notify.sock", "vsock:2:1234", "relative"])
def test_a_broken_socket_never_raises(monkeypatch, value):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog() is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_us(listener, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert sdnotify.watchdog_interval() is None


def test_a_stuck_event_loop_stops_the_watchdog_pings(listener):
    """The ping is a task on the loop: while the loop is blocked, systemd hears nothing."""

    async def scenario() -> None:
        pinger = asyncio.create_task(ping_watchdog(0.05))
        await asyncio.sleep(0.3)
        time.sleep(0.6)  # the loop is stuck
        await asyncio.sleep(0.3)
        pinger.cancel()

    asyncio.run(scenario())
    times = [t for t, _ in listener.with_key("WATCHDOG=1")]
    assert len(times) >= 8
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 0.55  # the stall
    assert sorted(gaps)[len(gaps) // 2] < 0.2  # otherwise about every 0.05 s
