"""The live event feed: what the appliance did, newest first."""

from __future__ import annotations

from collections import deque
from datetime import datetime

from rich.text import Text

from appliance.api_types import EventInfo
from tui import format as fmt
from tui.widgets.filter_table import FilterTable

LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}
KIND_STYLE = {"refused": "yellow", "training_failed": "bold red", "model_load_failed": "bold red",
              "promoted": "bold green", "trained": "green", "drift_detected": "bold red",
              "not_promoted": "yellow"}


class EventFeed(FilterTable):
    """Keeps the newest ``keep`` events; ``add`` takes new ones in any order."""

    FLEX_COLUMN = "message"
    FOLLOW_TOP = True

    def __init__(self, *, keep: int = 500, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._events: deque[EventInfo] = deque(maxlen=keep)
        self.last_id = 0

    def on_mount(self) -> None:
        self.add_column("time", key="ts")
        self.add_column("pipeline", key="pipeline")
        self.add_column("event", key="kind")
        self.add_column("what happened", key="message")

    def add(self, events: list[EventInfo], now: datetime) -> None:
        fresh = sorted((e for e in events if e.id > self.last_id), key=lambda e: e.id)
        if not fresh and self.total:
            return
        self._events.extend(fresh)
        if fresh:
            self.last_id = fresh[-1].id
        self.set_rows([
            (str(e.id), [
                Text(fmt.clock(e.ts, now), style="dim"),
                e.pipeline or "",
                Text(e.kind.replace("_", " "),
                     style=KIND_STYLE.get(e.kind, LEVEL_STYLE.get(e.level, ""))),
                Text(e.message, style=LEVEL_STYLE.get(e.level, ""), no_wrap=True,
                     overflow="ellipsis"),
            ])
            for e in reversed(self._events)
        ])

    def event_for(self, key: str | None) -> EventInfo | None:
        return next((e for e in self._events if str(e.id) == key), None)
