"""The fleet console (``appliance tui --fleet FILE``): the fleet overview first, and each
box's own screens (the single-box console's, on a client of that box) behind ``enter``.

It is the single-box app with one difference: its client is the open box's, swapped when
the operator opens another box; the overview's pollers keep running underneath, so the
fleet is current when the operator comes back (``escape``)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from textual.binding import Binding
from textual.screen import Screen

from tui.app import ApplianceApp
from tui.client import ApplianceClient
from tui.fleet.config import FleetBox
from tui.fleet.poller import FleetPoller, box_client
from tui.fleet.screen import FleetScreen
from tui.screens.help import HELP, HelpScreen
from tui.screens.overview import OverviewScreen
from tui.widgets.banner import Link

BOX_TIMEOUT_S = 5.0  # the box's own screens, as the single-box console

FLEET_HELP = """\
# appliance fleet

## The fleet

Every box of the fleet file, each polled on its own: a row per pipeline (production
version, status, drift, error rate, p99, when data last arrived) with the box's memory and
free disk, and below, the fleet's latest events. A box that does not answer is **down**
with how long (the line under the table says since when, why, and when it is asked
again); one that answers without proving it holds its token is **refused** and gets no
token. What a box last said stays on screen.

| key | does |
| --- | --- |
| `enter` | open the highlighted box: its own screens, as below |
| `escape` | from a box's overview, back to the fleet |
| `/` | filter the fleet (by box, pipeline, state...) |
| `ctrl+r` | ask every box now, the down ones too |

A box's actions (promote, retrain, release, discard) need its `admin_token` in the fleet
file; without it its screens are read-only.

# A box's own screens
"""


class FleetApp(ApplianceApp):
    TITLE = "appliance fleet"
    CSS_PATH = str(Path(__file__).resolve().parent.parent / "appliance.tcss")
    BINDINGS = [
        Binding("escape", "back_to_fleet", "Fleet", show=False),
    ]

    def __init__(self, boxes: list[FleetBox], *, refresh_seconds: float = 5.0,
                 poll_timeout: float = 3.0, max_backoff: float = 60.0,
                 box_refresh_seconds: float = 1.5, freeze_gc: bool = False,
                 clock: Callable[[], datetime] | None = None,
                 transports: dict[str, httpx.AsyncBaseTransport] | None = None) -> None:
        self.boxes = {b.name: b for b in boxes}
        self._freeze_gc = freeze_gc
        self._transports = transports or {}
        # Until a box is opened the per-box screens are not shown and this client is idle;
        # opening a box swaps in a client of that box (see open_box).
        first = boxes[0]
        super().__init__(self._client_for(first), refresh_seconds=box_refresh_seconds,
                         clock=clock)
        self.box: FleetBox | None = None
        self.poller = FleetPoller(boxes, refresh=refresh_seconds, timeout=poll_timeout,
                                  max_backoff=max_backoff, clock=self.clock,
                                  transports=self._transports)
        self.sub_title = f"{len(boxes)} boxes"

    def _client_for(self, box: FleetBox) -> ApplianceClient:
        return box_client(box, BOX_TIMEOUT_S, admin=True,
                          transport=self._transports.get(box.name))

    def _set_subtitle(self) -> None:
        if getattr(self, "box", None) is None:
            return
        mode = "" if self.client.can_admin else " · read-only (no admin token)"
        self.sub_title = f"{self.box.name} · {self.client.url}{mode} · escape: the fleet"

    def get_default_screen(self) -> Screen:
        return FleetScreen()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(FLEET_HELP + HELP.split("\n", 1)[1]))

    def on_mount(self) -> None:
        self.poller.start()
        if self._freeze_gc:
            # What the app holds once started lives as long as it does: out of the
            # collector's sight, a full collection no longer walks Textual's widgets and
            # styles (60-80 ms with 50 boxes: a key press waits that long).
            self.set_timer(1.0, gc.freeze)

    async def on_unmount(self) -> None:
        await self.poller.stop()  # (ApplianceApp's own on_unmount closes the box's client)

    # --- one box's own screens -----------------------------------------------------------

    def open_box(self, name: str) -> None:
        box = self.boxes.get(name)
        if box is None or not isinstance(self.screen, FleetScreen):
            return
        self.workers.cancel_group(self, "reconnect")
        old = self.client
        self.client = self._client_for(box)
        self.box = box
        self.pipelines = []
        self.link = Link("connecting", box.url)
        self.run_worker(old.aclose(), exit_on_error=False)
        self._set_subtitle()
        self.push_screen(OverviewScreen())

    def action_back_to_fleet(self) -> None:
        """From a box's overview back to the fleet (a pipeline's screen goes back to its
        box's overview first, with its own escape)."""
        if not isinstance(self.screen, OverviewScreen):
            return
        self.workers.cancel_group(self, "reconnect")
        self.box = None
        self.pipelines = []
        self.link = Link("connecting", "")
        self.pop_screen()
        self.sub_title = f"{len(self.boxes)} boxes"


def run(boxes: list[FleetBox], *, refresh_seconds: float = 5.0) -> int:
    FleetApp(boxes, refresh_seconds=refresh_seconds, freeze_gc=True).run()
    return 0
