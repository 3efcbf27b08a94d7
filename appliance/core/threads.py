"""Helpers for the daemon's worker threads."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("appliance.threads")

_warned: set[str] = set()
_warned_lock = threading.Lock()

_CONSEQUENCE = {
    "sched_setscheduler": "training runs at a nice value instead of SCHED_IDLE, so a "
                          "request waits for its time slice",
    "setpriority": "background threads (training, ingestion, the prediction log) run at "
                   "serving's priority and compete with it for the cores",
}


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

    A call the system refuses (a seccomp filter answers EPERM) is logged once per process,
    with what it costs and what to allow: never silently.
    """
    tid = threading.get_native_id()
    if idle:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return
        except AttributeError:
            pass  # no SCHED_IDLE here: a nice value is the next best
        except OSError as exc:
            _refused("sched_setscheduler", exc)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except AttributeError:
        pass
    except OSError as exc:
        _refused("setpriority", exc)


def _refused(call: str, exc: OSError) -> None:
    with _warned_lock:
        if call in _warned:
            return
        _warned.add(call)
    log.warning("priority_not_lowered call=%s error=%s: %s; under systemd the unit must "
                "allow the call (SystemCallFilter=setpriority sched_setscheduler, as "
                "systemd/appliance.service does)", call, exc.strerror or exc,
                _CONSEQUENCE[call])


def lower_to_idle() -> None:
    """:func:`lower_thread_priority` with ``idle``: a thread pool's initializer."""
    lower_thread_priority(idle=True)
