"""The overview: every pipeline, the box, and the live event feed."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from appliance.api_types import SystemResponse
from tui import format as fmt
from tui.client import NotAvailable, gather
from tui.messages import OverviewSnapshot
from tui.screens.base import FilterBar, LiveScreen, guarded
from tui.widgets.banner import ConnectionBanner
from tui.widgets.box_panel import BoxPanel
from tui.widgets.event_feed import EventFeed
from tui.widgets.pipeline_table import PipelineTable


class OverviewScreen(LiveScreen):
    BINDINGS = [
        Binding("r", "retrain", "Retrain"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner()
        yield Static(id="problem")
        yield Static(id="hint", classes="hint")
        yield PipelineTable(title="pipelines", id="pipelines")
        with Horizontal(id="lower"):
            with Vertical(id="feed"):
                yield EventFeed(title="events", id="events")
                yield Static(id="event-detail", classes="live")
            yield BoxPanel(id="box")
        yield FilterBar()
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(PipelineTable)
        table.border_subtitle = "enter: open · r: retrain"
        self.query_one(EventFeed).border_subtitle = "enter: open its pipeline"
        table.focus()

    async def load(self) -> Message:
        client = self.console.client
        feed = self.query_one(EventFeed)

        async def system() -> SystemResponse | NotAvailable:
            try:
                return await client.system()
            except NotAvailable as exc:
                return exc

        pipelines, events, box = await gather(
            client.pipelines(), client.events(after=feed.last_id), system())
        return OverviewSnapshot(pipelines=pipelines, new_events=events.events, system=box)

    @guarded
    def on_overview_snapshot(self, snap: OverviewSnapshot) -> None:
        now = self.console.clock()
        rows = snap.pipelines.pipelines
        self.console.pipelines = [p.name for p in rows]
        self.query_one(PipelineTable).show(rows, now)
        self.query_one(EventFeed).add(snap.new_events, now)
        self.query_one(BoxPanel).show(snap.system)
        hint = self.query_one("#hint", Static)
        hint.update("" if rows else
                    "No pipelines yet. Drop a CSV or Parquet file into "
                    "<state>/inbox/<pipeline>/ (or `appliance ingest FILE --pipeline NAME`); "
                    "it shows up here within seconds.")
        hint.set_class(not rows, "-shown")

    @on(DataTable.RowSelected, "#pipelines")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.console.open_pipeline(event.row_key.value)

    @on(DataTable.RowHighlighted, "#events")
    def _event_highlighted(self, event: DataTable.RowHighlighted) -> None:
        info = self.query_one(EventFeed).event_for(event.row_key.value)
        detail = self.query_one("#event-detail", Static)
        if info is None:
            detail.update("")
            return
        text = Text()
        text.append(f"{info.kind.replace('_', ' ')}", style="bold")
        if info.pipeline:
            text.append(f" · {info.pipeline}")
        text.append(f" · {fmt.clock(info.ts, self.console.clock())}: ", style="dim")
        text.append(info.message)
        detail.update(text)

    @on(DataTable.RowSelected, "#events")
    def _open_from_event(self, event: DataTable.RowSelected) -> None:
        info = self.query_one(EventFeed).event_for(event.row_key.value)
        if info is not None and info.pipeline:
            self.console.open_pipeline(info.pipeline)

    def action_retrain(self) -> None:
        name = self.query_one(PipelineTable).highlighted_key
        if name is None:
            self.notify("no pipeline to retrain yet", severity="warning")
            return
        self.console.retrain(name)
