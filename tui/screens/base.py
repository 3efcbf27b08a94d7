"""What every live screen shares: a poller, the connection banner, and table filtering."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input, Static
from textual.worker import Worker

from tui.client import ApiError, DaemonUnavailable
from tui.widgets.filter_table import FilterTable

if TYPE_CHECKING:
    from tui.app import ApplianceApp


class FilterBar(Input):
    """Typing filters the table that had focus; enter keeps the filter, escape clears it."""

    DEFAULT_CSS = """
    FilterBar { display: none; dock: bottom; height: 3; border: tall $accent; }
    FilterBar.-open { display: block; }
    """

    BINDINGS = [Binding("escape", "close", "Clear filter")]

    def __init__(self) -> None:
        super().__init__(placeholder="filter: type to keep only matching rows; "
                                     "enter keeps it, escape clears it", id="filter")
        self.target: FilterTable | None = None

    def open(self, target: FilterTable) -> None:
        self.target = target
        self.value = target.filter_text
        self.add_class("-open")
        self.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.target is not None:
            self.target.filter_text = event.value

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.remove_class("-open")
        if self.target is not None:
            self.target.focus()

    def action_close(self) -> None:
        self.value = ""
        if self.target is not None:
            self.target.filter_text = ""
        self.remove_class("-open")
        if self.target is not None:
            self.target.focus()


F = TypeVar("F", bound=Callable[..., None])


def guarded(handler: F) -> F:
    """For the handlers that draw a snapshot: an answer this console cannot draw (a newer
    daemon, an odd value in a free-form field) is reported on the screen, never raised."""

    @functools.wraps(handler)
    def wrapper(self: LiveScreen, *args: Any, **kwargs: Any) -> None:
        try:
            handler(self, *args, **kwargs)
        except Exception as exc:
            self.log.error("cannot draw", handler=handler.__name__, error=repr(exc))
            self.show_problem(f"part of this screen could not be drawn from the daemon's "
                              f"answer ({type(exc).__name__}: {exc})")

    return wrapper  # type: ignore[return-value]


class LiveScreen(Screen[None]):
    """A screen that polls the daemon every ``app.refresh_seconds`` while it is shown.

    Subclasses implement :meth:`load` (fetch, return a message) and handle that message.
    A poll never overlaps the previous one; the daemon not answering is reported to the
    app, which shows the banner and reconnects; other API errors show on the screen."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("ctrl+r", "refresh", "Refresh", show=False),
    ]

    DEFAULT_CSS = """
    LiveScreen #problem { display: none; height: auto; padding: 0 1; color: $warning; }
    LiveScreen #problem.-shown { display: block; }
    LiveScreen.-offline FilterTable, LiveScreen.-offline .live { opacity: 60%; }
    """

    _worker: Worker[None] | None = None

    @property
    def console(self) -> ApplianceApp:
        return cast("ApplianceApp", self.app)

    def on_mount(self) -> None:
        self.set_interval(self.console.refresh_seconds, self.poll)
        self.watch(self.app, "link", self._on_link, init=False)
        self.call_after_refresh(self.poll)

    def on_screen_resume(self) -> None:
        self.poll(force=True)

    def _on_link(self, link: Any) -> None:
        self.set_class(link.state == "down", "-offline")
        if link.state == "up":
            self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        if self.console.link.state == "down" or not self.is_current:
            return
        if not force and self._worker is not None and self._worker.is_running:
            return
        self._worker = self.fetch()

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def fetch(self) -> None:
        try:
            message = await self.load()
        except DaemonUnavailable as exc:
            self.console.connection_lost(exc)
            return
        except ApiError as exc:
            self.console.connection_ok()
            self.show_problem(f"{exc.message} ({exc.code})")
            return
        self.console.connection_ok()
        self.show_problem(None)
        self.post_message(message)

    async def load(self) -> Message:
        raise NotImplementedError

    def show_problem(self, text: str | None) -> None:
        for problem in self.query("#problem").results(Static):
            problem.update(Text(text or ""))  # a daemon's message: plain text, not markup
            problem.set_class(bool(text), "-shown")

    def action_refresh(self) -> None:
        self.poll(force=True)

    def action_filter(self) -> None:
        target = self.focused if isinstance(self.focused, FilterTable) else None
        if target is None:
            tables = [t for t in self.query(FilterTable) if t.display and t.region.area]
            target = tables[0] if tables else None
        if target is None:
            self.notify("nothing to filter here", severity="warning")
            return
        self.query_one(FilterBar).open(target)
