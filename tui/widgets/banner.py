"""The connection banner: shown while the daemon does not answer, gone when it does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from tui import format as fmt


@dataclass(frozen=True)
class Link:
    """The state of the connection to the daemon, as the app knows it."""

    state: str  # "connecting" | "up" | "down"
    url: str
    reason: str = ""
    since: datetime | None = None
    attempt: int = 0
    next_retry_s: float = 0.0


class ConnectionBanner(Static):
    DEFAULT_CSS = """
    ConnectionBanner {
        display: none;
        height: auto;
        padding: 0 1;
        background: $error 30%;
        color: $text;
        text-style: bold;
    }
    ConnectionBanner.-down { display: block; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "link", self._show)

    def _show(self, link: Link) -> None:
        self.set_class(link.state == "down", "-down")
        if link.state != "down":
            self.update("")
            return
        since = fmt.clock(link.since.timestamp()) if link.since else fmt.NONE
        retry = (f"attempt {link.attempt}, next in {link.next_retry_s:g} s"
                 if link.attempt else "retrying")
        hint = " Is `appliance run` running?" if link.reason == "connection refused" else ""
        self.update(Text(
            f"⚠ No answer from the daemon at {link.url} ({link.reason}) since {since}."
            f"{hint} Reconnecting by itself ({retry}); what you see is as of then."
        ))
