"""A response's writes leave in one system call: the writes of one turn of the event loop
are joined, sent before the loop's next callbacks run, and never lost or reordered when the
connection is closed. (Over real HTTP, every serving test goes through it.)"""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.daemon.connections import CoalescingTransport


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("eof", None))

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_of_one_turn_leave_together_and_in_order():
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"{}")
    assert raw.calls == []  # nothing sent within the turn
    await asyncio.sleep(0)
    assert raw.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\n{}")]
    t.write(b"next")
    await asyncio.sleep(0)
    assert raw.calls[-1] == ("write", b"next")
    assert t.get_extra_info("peername") == "info:peername"  # the rest is the transport's


async def test_close_sends_what_is_pending_first_and_abort_drops_it():
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"a")
    t.write(b"b")
    t.close()
    assert raw.calls == [("write", b"ab"), ("close", None)]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert raw.calls == [("write", b"ab"), ("close", None)]
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"x")
    t.write_eof()
    t.write(b"y")
    t.abort()
    await asyncio.sleep(0)
    assert raw.calls == [("write", b"x"), ("eof", None), ("abort", None)]
