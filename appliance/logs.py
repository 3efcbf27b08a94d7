"""Logging: one line per event on stderr, ``level event key=value ...``.

When stderr is the journal (``$JOURNAL_STREAM`` is set) each line starts with the syslog
priority (``<3>`` .. ``<7>``), so ``journalctl -p warning`` filters by level.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class _LineFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [record.levelname.lower(), record.getMessage()]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
        if record.exc_info:
            parts.append("exc=" + _quote(self.formatException(record.exc_info)))
        line = " ".join(parts)
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + " " + line


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak only when something is wrong.
    for noisy in ("uvicorn", "uvicorn.error", "watchdog", "apscheduler", "litestar"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event with its fields."""
    logger.log(level, name, extra={"fields": fields})
