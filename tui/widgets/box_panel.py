"""The box the appliance runs on: CPU, memory, disk, and the daemon's own share."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

from appliance.api_types import ResourceSample, SystemResponse
from tui import format as fmt

HISTORY = 120  # samples drawn in each sparkline


class BoxPanel(Vertical):
    DEFAULT_CSS = """
    BoxPanel {
        height: auto;
        border: round $primary 50%;
        border-title-color: $text;
        padding: 0 1;
    }
    BoxPanel > .metric { height: 1; }
    BoxPanel > Sparkline { height: 2; margin-bottom: 1; }
    BoxPanel > #box-note { color: $text-muted; }
    BoxPanel.-unavailable > .metric, BoxPanel.-unavailable > Sparkline { display: none; }
    BoxPanel > #box-cpu-spark > .sparkline--max-color { color: $warning; }
    BoxPanel > #box-mem-spark > .sparkline--max-color { color: $accent; }
    """

    def compose(self) -> ComposeResult:
        self.border_title = "box"
        yield Label(id="box-cpu", classes="metric")
        yield Sparkline([], id="box-cpu-spark")
        yield Label(id="box-mem", classes="metric")
        yield Sparkline([], id="box-mem-spark")
        yield Label(id="box-disk", classes="metric")
        yield Label(id="box-proc", classes="metric")
        yield Static("waiting for the daemon…", id="box-note")

    def show(self, system: SystemResponse | Exception) -> None:
        note = self.query_one("#box-note", Static)
        if isinstance(system, Exception):
            self.add_class("-unavailable")
            note.update("Box resources are not available from this daemon yet "
                        "(no GET /v1/system). They appear here by themselves once it has it.")
            return
        self.remove_class("-unavailable")
        samples = system.samples[-HISTORY:]
        if not samples:
            note.update("no samples yet")
            return
        note.update("")
        last: ResourceSample = samples[-1]
        self.query_one("#box-cpu", Label).update(
            f"CPU     {last.cpu_percent:5.1f}%  load {last.load_1m:.2f}")
        self.query_one("#box-cpu-spark", Sparkline).data = [s.cpu_percent for s in samples]
        self.query_one("#box-mem", Label).update(
            f"memory  {last.memory_percent:5.1f}%  {fmt.size(last.memory_available_bytes)} free")
        self.query_one("#box-mem-spark", Sparkline).data = [s.memory_percent for s in samples]
        self.query_one("#box-disk", Label).update(
            f"disk    {fmt.size(last.disk_free_bytes)} free")
        temp = f" · {last.temperature_c:.0f}°C" if last.temperature_c is not None else ""
        self.query_one("#box-proc", Label).update(
            f"daemon  {last.process_cpu_percent:.0f}% CPU · {fmt.size(last.process_rss_bytes)}"
            f"{temp}")
