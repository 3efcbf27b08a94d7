"""Talking to systemd (sd_notify(3)), with no dependency: one datagram to ``$NOTIFY_SOCKET``.

Modelled on systemd's ``man/notify-selfcontained-example.py``. Outside systemd (no
``NOTIFY_SOCKET``) every call does nothing. A failure to notify is logged at debug level and
never raised: telling systemd about our health must not be what breaks it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("appliance.sdnotify")


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path[0] == "@":  # an abstract socket
        return "\0" + path[1:]
    if path[0] == "/":
        return path
    return None  # vsock: and others are for VMs; not supported here


def enabled() -> bool:
    """True when systemd (or a test) listens for our notifications."""
    return _address() is not None


def notify(message: str) -> bool:
    """Send ``message`` (``KEY=value`` lines); returns whether it was sent."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except Exception as exc:  # never let systemd's side take the daemon down
        log.debug("sd_notify_failed error=%r message=%r", exc, message[:200])
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]


def ready(status: str | None = None) -> bool:
    """Startup finished (or a reload did): ``READY=1``, with a status line if given."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def status(text: str) -> bool:
    """The one-line summary ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` systemd >= 253 wants; ``READY=1`` ends it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}"
                  + (f"\nSTATUS={_one_line(status)}" if status else ""))


def watchdog() -> bool:
    """Tell the watchdog we are alive."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when systemd
    watches no watchdog for this process."""
    if not enabled():
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
