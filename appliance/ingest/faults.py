"""Whose fault a failure is: the file's, or the box's.

A file that can't be read or parsed is refused. But some failures say nothing about the
file: the process is out of file descriptors (``EMFILE``, ``ENFILE``: too many connections
open, say), the disk is full, memory ran out. Such a file goes back to the inbox and is
taken again (:meth:`~appliance.ingest.ingester.Ingester.process`):

- ``no_fds``: never the file's fault; it is taken again, as often as it takes;
- ``no_room``, ``no_memory``: the box's fault, or the file's (a gzip bomb, a file that
  needs more memory than the box has): taken again once, and refused the second time;

and a file the process dies on (out of memory, a native abort) is counted at its start, and
refused at the third start (``CRASHES_TOLERATED``).

Polars reports an OS error from Rust as text (``... (os error 24)``), so the text is read
too (:func:`os_error_in`).
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_FDS = (errno.EMFILE, errno.ENFILE)
NO_MEMORY = (errno.ENOMEM,)
TRANSIENT = NO_SPACE + NO_FDS + NO_MEMORY
CRASHES_TOLERATED = 2           # a claimed file is refused at its third start
TIMES_SENT_BACK = 1             # a file is refused the second time it needs more room


class NoRoom(OSError):
    """Decompression passed its budget of disk space: what is left above
    ``ingest.min_free_mb``, shared with the conversion that follows."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(errno.ENOSPC, message)
        self.details = details


# What the box ran short of, in words, by fault.
RESOURCE = {"no_room": "disk space", "no_fds": "file descriptors", "no_memory": "memory"}


def fault_of(exc: BaseException) -> str | None:
    """``no_room``, ``no_fds`` or ``no_memory`` when the box ran short of a resource;
    None when the failure is the file's (or a bug)."""
    if isinstance(exc, MemoryError):
        return "no_memory"
    if isinstance(exc, OSError):
        if exc.errno in NO_SPACE:
            return "no_room"
        if exc.errno in NO_FDS:
            return "no_fds"
        if exc.errno in NO_MEMORY:
            return "no_memory"
    return None


# How Rust shows an OS error: its Display at the start of Polars' message ("Too many open
# files (os error 24): /path"), or its Debug inside a panic's ("Os { code: 24, ... }").
# Only these forms count: a message that quotes a value from the file (a parse error) never
# starts so, so no file can pass for a fault of the box and be retried forever.
_DISPLAY = re.compile(r"\A[A-Za-z ]{4,60} \(os error (\d+)\)")
_DEBUG = re.compile(r"\bOs \{ code: (\d+), kind: ")


def os_error_in(text: str) -> OSError | None:
    """The OS error a message from Polars (Rust) reports, when it is one of the box's
    faults above; else None."""
    m = _DISPLAY.match(text.strip()) or _DEBUG.search(text)
    if m is None or int(m.group(1)) not in TRANSIENT:
        return None
    code = int(m.group(1))
    return OSError(code, f"{os.strerror(code)} (in Polars: {text.strip().splitlines()[0][:200]})")
