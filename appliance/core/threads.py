"""Helpers for the daemon's worker threads."""

from __future__ import annotations

import os
import threading


def lower_thread_priority(niceness: int = 10, *, idle: bool = False) -> None:
    """Run the calling thread (and the threads it starts) at a lower CPU priority, so that
    serving wins the cores when training, ingestion or the prediction log are busy. Linux
    only; elsewhere a no-op.

    ``idle`` puts it under ``SCHED_IDLE`` instead of a nice value: it then runs only on a
    core that nothing else wants, and a request's thread that wakes up takes the core from
    it at once. A nice value only shrinks a thread's share: the kernel lets it finish its
    slice, which is a millisecond of waiting in the tail of prediction latency. For
    training (long, many threads, worth less than an answer now); on a box kept busy on
    every core it then waits for idle time.
    """
    tid = threading.get_native_id()
    try:
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return
    except (AttributeError, OSError):
        pass  # no SCHED_IDLE here: a nice value is the next best
    try:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except (AttributeError, OSError):
        pass


def lower_to_idle() -> None:
    """:func:`lower_thread_priority` with ``idle``: a thread pool's initializer."""
    lower_thread_priority(idle=True)
