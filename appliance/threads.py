"""Helpers for the daemon's worker threads."""

from __future__ import annotations

import os
import threading


def lower_thread_priority(niceness: int = 10) -> None:
    """Run the calling thread (and the threads it starts) at a lower CPU priority, so that
    serving wins the cores when training, ingestion or the prediction log are busy. Linux
    only; elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
