"""Logging: one line per event on stderr, ``level event key=value ...``.

When stderr is the journal (``$JOURNAL_STREAM`` is set) each line starts with the syslog
priority (``<3>`` .. ``<7>``), so ``journalctl -p warning`` filters by level.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def _quote(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple, set)) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'
    return text


class _LineFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        message = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")
        parts = [record.levelname.lower(), message]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
        if record.exc_info:
            parts.append("exc=" + _quote(self.formatException(record.exc_info)))
        line = " ".join(parts)
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + " " + line


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald: ``$JOURNAL_STREAM`` names its device and
    inode (systemd.exec(5)). A child whose stderr was redirected inherits the variable but
    not the stream, so the two are compared."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return bool(value) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


# Libraries speak only when something is wrong.
_NOISY = ("uvicorn", "uvicorn.error", "uvicorn.access", "watchdog", "apscheduler", "litestar",
          "asyncio")


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(journal=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # Warnings and uncaught exceptions, from any thread, are events too: one line each.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def set_level(level: str) -> None:
    """Change the level while running (a config reload)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _log_uncaught(kind: type[BaseException], exc: BaseException,
                  tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("appliance").critical("uncaught_exception", exc_info=(kind, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("appliance").error(
        "thread_crashed thread=%s", args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event with its fields."""
    logger.log(level, name, extra={"fields": fields})
