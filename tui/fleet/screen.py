"""The fleet overview: every box with its pipelines, and the fleet's latest events.

The screen only reads the pollers' states (:mod:`tui.fleet.poller`) and redraws at most a
few times a second when one changed: a slow or dead box costs it nothing."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui import format as fmt
from tui.fleet.poller import BoxState
from tui.screens.base import FilterBar
from tui.widgets.event_feed import KIND_STYLE, LEVEL_STYLE
from tui.widgets.filter_table import Cell, FilterTable, Row
from tui.widgets.pipeline_table import drift_share, drift_text, status_text

if TYPE_CHECKING:
    from tui.fleet.app import FleetApp

SEP = "\t"  # between a box's name and a pipeline's in a row key
REDRAW_S = 0.5

STATE_STYLE = {"up": "green", "down": "bold red", "refused": "bold yellow",
               "connecting": "dim"}


def state_text(state: BoxState, now: datetime) -> Text:
    """"up", "down 3m" (since the first failed poll; "down <1m" in the first minute, so a
    cell changes at most once a minute), "refused 2h", "connecting…"."""
    style = STATE_STYLE.get(state.state, "")
    if state.state in ("down", "refused") and state.since is not None:
        seconds = max(0.0, (now - state.since).total_seconds())
        span = "<1m" if seconds < 60 else fmt._span(seconds)
        return Text(f"{state.state} {span}", style=style)
    return Text("connecting…" if state.state == "connecting" else state.state, style=style)


def last_data(ts: str | None, now: datetime) -> str:
    """How long ago, in minutes at the finest ("<1m ago"): 50 boxes' cells then change at
    most once a minute, not every second (each change draws the table again)."""
    when = fmt.parse_ts(ts)
    if when is not None and 0 <= (now - when).total_seconds() < 60:
        return "<1m ago"
    return fmt.ago(ts, now)


def box_rows(state: BoxState, now: datetime) -> list[Row]:
    """A box's rows: one per pipeline (what it knew last, when it is down now), or one
    saying why there is none."""
    sample = state.system
    mem = (f"{sample.memory_percent:.0f}%" if sample else fmt.NONE)
    disk = (fmt.size(sample.disk_free_bytes) if sample else fmt.NONE)
    head: list[Cell] = [Text(state.name, style="bold"), state_text(state, now)]
    rows: list[Row] = []
    dim = "dim" if state.state != "up" else ""
    for i, p in enumerate(state.pipelines):
        model = f"v{p.production_version}" if p.production_version is not None else fmt.NONE
        if p.serving_version is not None and p.serving_version != p.production_version:
            model += f" (serving v{p.serving_version})"
        err = Text(fmt.percent(p.error_rate), justify="right",
                   style="bold red" if (p.error_rate or 0) >= 0.01 else dim)
        cells: list[Cell] = [
            # The box's name on each of its rows (dim after the first), so filtering by it
            # keeps them all.
            *(head if i == 0 else [Text(state.name, style="dim"), ""]),
            Text(p.name, style=dim), Text(model, style=dim), status_text(p.status),
            drift_text(p.drift_status, drift_share(p)), err,
            Text(fmt.ms(p.p99_ms), justify="right", style=dim),
            Text(last_data(p.last_ingestion, now), style=dim),
            *((Text(mem, justify="right"), Text(disk, justify="right")) if i == 0
              else ("", "")),
        ]
        rows.append((state.name + SEP + p.name, cells))
    if not rows:
        if state.state == "up":
            note = Text("no pipelines yet", style="dim")
        elif state.state == "connecting":
            note = Text("asking…", style="dim")
        else:
            note = Text(state.reason, style=STATE_STYLE.get(state.state, ""))
        rows.append((state.name + SEP, [
            *head, note, "", "", "", "", "", "",
            Text(mem, justify="right"), Text(disk, justify="right")]))
    return rows


class FleetTable(FilterTable):
    COLUMNS = [("box", "box"), ("state", "state"), ("pipeline", "pipeline"),
               ("model", "model"), ("status", "status"), ("drift", "drift"),
               ("errors", "err"), ("p99", "p99"), ("last data", "last"), ("mem", "mem"),
               ("disk free", "disk")]
    FLEX_COLUMN = "pipeline"

    def on_mount(self) -> None:
        for label, key in self.COLUMNS:
            justify = "right" if key in ("err", "p99", "mem", "disk") else "left"
            self.add_column(Text(label, justify=justify), key=key)


class FleetEvents(FilterTable):
    """The newest events of every box, newest first."""

    FLEX_COLUMN = "message"
    FOLLOW_TOP = True

    def on_mount(self) -> None:
        for label, key in (("time", "ts"), ("box", "box"), ("pipeline", "pipeline"),
                           ("event", "kind"), ("what happened", "message")):
            self.add_column(label, key=key)

    def show(self, states: list[BoxState], now: datetime, keep: int = 50) -> None:
        events = sorted(((s.name, e) for s in states for e in s.events),
                        key=lambda item: (fmt.parse_ts(item[1].ts) or now, item[1].id),
                        reverse=True)[:keep]
        self.set_rows([
            (f"{box}{SEP}{e.id}", [
                Text(fmt.clock(e.ts, now), style="dim"), Text(box, style="bold"),
                e.pipeline or "",
                Text(e.kind.replace("_", " "),
                     style=KIND_STYLE.get(e.kind, LEVEL_STYLE.get(e.level, ""))),
                Text(e.message, style=LEVEL_STYLE.get(e.level, ""), no_wrap=True,
                     overflow="ellipsis"),
            ]) for box, e in events])


class FleetScreen(Screen[None]):
    """Every box of the fleet file; ``enter`` opens the box's own screens."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("ctrl+r", "refresh", "Ask every box now"),
    ]

    DEFAULT_CSS = """
    FleetScreen #fleet { height: 2fr; }
    FleetScreen #fleet-events { height: 1fr; }
    FleetScreen #fleet-detail { height: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._drawn: dict[str, int] | None = None
        self._drawn_tick = 0

    @property
    def fleet(self) -> FleetApp:
        return cast("FleetApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield FleetTable(title="fleet", id="fleet")
        yield Static(id="fleet-detail")
        yield FleetEvents(title="latest events", id="fleet-events")
        yield FilterBar()
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(FleetTable)
        table.border_subtitle = "enter: open the box · /: filter · ctrl+r: ask every box now"
        table.focus()
        self.redraw(force=True)
        self.set_interval(REDRAW_S, self.redraw)

    def on_screen_resume(self) -> None:
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        """Draw again when a box changed since the last drawing (and each second anyway,
        for the "down 3m" clocks)."""
        if not self.is_current:
            return  # a box's own screens are shown; drawn again on resume
        states = list(self.fleet.poller.states.values())
        versions = {s.name: s.version for s in states}
        now = self.fleet.clock()
        tick = int(now.timestamp())
        if not force and versions == self._drawn and tick == self._drawn_tick:
            return
        self._drawn, self._drawn_tick = versions, tick
        rows = [row for s in states for row in box_rows(s, now)]
        self.query_one(FleetTable).set_rows(rows)
        self.query_one(FleetEvents).show(states, now)
        up = sum(s.state == "up" for s in states)
        down = sum(s.state in ("down", "refused") for s in states)
        self.sub_title = (f"{len(states)} boxes · {up} up · {down} not answering"
                          if down else f"{len(states)} boxes · {up} up")
        self._detail()

    def _detail(self) -> None:
        key = self.query_one(FleetTable).highlighted_key
        state = self.fleet.poller.states.get(key.split(SEP)[0]) if key else None
        detail = self.query_one("#fleet-detail", Static)
        if state is None:
            detail.update("")
            return
        text = Text(f"{state.name} · {state.box.url}")
        if state.state in ("down", "refused"):
            text.append(f" · {state.state} since {fmt.clock(state.since.timestamp())}"
                        if state.since else f" · {state.state}", style="bold")
            text.append(f" ({state.reason}); next try in {state.next_poll_s:g} s")
        elif state.last_ok is not None:
            text.append(f" · answered at {fmt.clock(state.last_ok.timestamp())}")
        if state.system_note:
            text.append(f" · {state.system_note}")
        pipeline = next((p for p in state.pipelines if key and p.name == key.split(SEP)[1]),
                        None)
        if pipeline is not None and pipeline.drift_summary:
            text.append(f" · {pipeline.name}: {pipeline.drift_summary}")
        if not state.box.admin_token:
            text.append(" · read-only (no admin token)")
        detail.update(text)

    @on(DataTable.RowHighlighted, "#fleet")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    @on(DataTable.RowSelected, "#fleet")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.fleet.open_box(event.row_key.value.split(SEP)[0])

    @on(DataTable.RowSelected, "#fleet-events")
    def _event_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.fleet.open_box(event.row_key.value.split(SEP)[0])

    def action_refresh(self) -> None:
        self.fleet.poller.poll_now()

    def action_filter(self) -> None:
        target = self.focused if isinstance(self.focused, FilterTable) else None
        self.query_one(FilterBar).open(target or self.query_one(FleetTable))
