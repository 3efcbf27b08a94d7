"""How numbers and times read on screen. "–" always means "not known (yet)"."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from rich.text import Text
from textual.markup import escape

NONE = "–"


def plain(text: object, style: str = "") -> Text:
    """Text from the daemon (a name, a message, a reason) as it is: never read as markup,
    so `[red]x.csv` or `Temperature [C]` shows as those characters and `[/]` can't crash a
    widget. Tables, panels and titles take Text."""
    return Text(str(text), style=style)


def markup_safe(text: object) -> str:
    """For the few places that only take markup (the command palette's titles and help):
    the text with its square brackets escaped."""
    return escape(str(text))


def parse_ts(value: str | float | None) -> datetime | None:
    """An API time (ISO 8601 with Z, or unix seconds) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def ago(value: str | float | None, now: datetime) -> str:
    """How long ago, in the largest unit that fits: "4s ago", "12m ago", "3h ago", "5d ago"."""
    ts = parse_ts(value)
    if ts is None:
        return NONE
    seconds = (now - ts).total_seconds()
    if seconds < -5:
        return "in " + _span(-seconds)
    return "now" if seconds < 1 else _span(seconds) + " ago"


def until(value: str | float | None, now: datetime) -> str:
    ts = parse_ts(value)
    if ts is None:
        return NONE
    seconds = (ts - now).total_seconds()
    return "due" if seconds <= 0 else "in " + _span(seconds)


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def clock(value: str | float | None, now: datetime | None = None) -> str:
    """Local wall time; the date too when it is not today."""
    ts = parse_ts(value)
    if ts is None:
        return NONE
    local = ts.astimezone()
    if now is not None and local.date() != now.astimezone().date():
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%H:%M:%S")


def duration(start: str | None, end: str | None) -> str:
    a, b = parse_ts(start), parse_ts(end)
    if a is None or b is None:
        return NONE
    seconds = (b - a).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s" if seconds < 60 \
        else _span(seconds)


def num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return NONE
    return f"{value:.{digits}f}"


def ms(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"


def rate(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def percent(value: float | None, digits: int = 1) -> str:
    """A ratio from 0 to 1 as a percentage."""
    if value is None:
        return NONE
    return f"{value * 100:.{digits}f}%"


def count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def size(value: float | None) -> str:
    if value is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return NONE  # pragma: no cover


def dtype(value: str) -> str:
    """A Polars dtype as a person reads it: Datetime(time_unit='us', ...) -> Datetime."""
    return re.sub(r"\(.*\)$", "", value)
