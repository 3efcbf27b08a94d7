"""What each screen shows, and every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# appliance console

Everything here comes from the daemon's HTTP API and refreshes by itself every second or
two. If the daemon stops answering, a red banner says so and the console reconnects on its
own; nothing is lost.

## Overview

- **Pipelines**: status, production model and its metric, requests/s, p50/p99 latency,
  error rate, drift (`drift 41%`: the drifted features carry 41% of the model's gain), and
  when data last arrived. `enter` opens a pipeline.
- **Box**: CPU, memory and disk of the machine, and what the daemon itself uses.
- **Events**: what the appliance did, newest first: files taken or refused, training,
  promotions, drift. `enter` on an event opens its pipeline.

## A pipeline

| tab | shows |
| --- | --- |
| `1` Data | files received (refused: why; held: its suspect labels); feature sets; schema |
| `2` Models | every version on the same newest rows and on its own, the gate's verdict, lineage |
| `3` Drift | the headline; per feature PSI, verdict, share of gain, p-value; drift over time |
| `4` Traffic | latency percentiles and throughput over time |
| `5` Jobs | scheduled jobs with their next run, and the history of job runs |

## Keys

| key | does |
| --- | --- |
| `enter` | open the highlighted pipeline |
| `escape` | back to the overview (or close a dialog) |
| `1`–`5` | switch tabs on a pipeline's screen |
| `p` | promote the highlighted model version (to roll back, promote an older one) |
| `r` | retrain the pipeline now |
| `l` | Data tab: release the highlighted held data set (suspect labels): it trains |
| `x` | Data tab: discard the highlighted held data set: it never trains (its files are kept) |
| `/` | filter the table that has focus; `escape` clears the filter |
| `tab` | move between tables |
| `ctrl+r` | refresh now |
| `ctrl+p` | the command palette: every action, searchable |
| `?` | this help |
| `q` | quit (the daemon keeps running) |

Promoting, retraining, releasing and discarding change what is served or trained, so each
asks first, and each needs the admin token (from the state directory, `--token` or
`APPLIANCE_TOKEN`); without it the console is read-only.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%;
        max-width: 96;
        height: 90%;
        border: thick $primary 60%;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def __init__(self, text: str = HELP) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(self.text)

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()  # arrows and page keys scroll
