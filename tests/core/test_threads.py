"""Background threads give way to serving: training under SCHED_IDLE (and the threads it
starts, as LightGBM's are), other work at a nice value."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from appliance.core import lower_thread_priority, lower_to_idle

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _in_thread(setup, probe):
    """Run ``setup`` then ``probe`` on a new thread and on a thread that one starts."""
    seen = {}

    def child() -> None:
        seen["child"] = probe()

    def parent() -> None:
        setup()
        seen["parent"] = probe()
        t = threading.Thread(target=child)
        t.start()
        t.join()

    t = threading.Thread(target=parent)
    t.start()
    t.join()
    return seen


def test_training_threads_run_under_sched_idle_and_pass_it_on():
    seen = _in_thread(lower_to_idle, lambda: os.sched_getscheduler(0))
    assert seen == {"parent": os.SCHED_IDLE, "child": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is untouched


def test_other_background_threads_are_niced():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen = _in_thread(lower_thread_priority,
                      lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert seen["parent"] == seen["child"] >= 10
    assert os.getpriority(os.PRIO_PROCESS, 0) == base


def test_a_refused_priority_change_is_logged_once(monkeypatch, caplog):
    """Under a seccomp filter (the unit's SystemCallFilter) both calls fail with EPERM: the
    threads then compete with serving, which the operator must hear about, once."""
    import errno
    import logging

    from appliance.core import threads as threads_module

    def refused(*_args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(threads_module.os, "sched_setscheduler", refused)
    monkeypatch.setattr(threads_module.os, "setpriority", refused)
    monkeypatch.setattr(threads_module, "_warned", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="appliance")
    for _ in range(3):
        _in_thread(lower_to_idle, lambda: None)
        _in_thread(lower_thread_priority, lambda: None)
    records = [r for r in caplog.records if r.name.startswith("appliance")]
    messages = [r.getMessage() for r in records]
    assert len(records) == 2, messages
    assert all(r.levelno == logging.WARNING for r in records)
    idle = next(m for m in messages if "call=sched_setscheduler" in m)
    nice = next(m for m in messages if "call=setpriority" in m)
    for m in (idle, nice):
        assert "Operation not permitted" in m and "SystemCallFilter" in m, m
