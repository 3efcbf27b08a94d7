"""The operator's console: a Textual app that watches and drives one daemon over HTTP.

It never opens the database: everything comes from :class:`tui.client.ApplianceClient`,
so it works the same on the box and over an ssh tunnel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime

import httpx
from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tui import format as fmt
from tui.client import ApiError, ApplianceClient, DaemonUnavailable
from tui.messages import ConnectionLost, ConnectionRestored
from tui.screens.help import HelpScreen
from tui.screens.overview import OverviewScreen
from tui.screens.pipeline import PipelineScreen
from tui.widgets.banner import Link

MAX_BACKOFF_S = 5.0


class ApplianceApp(App[None]):
    CSS_PATH = "appliance.tcss"
    TITLE = "appliance"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
    ]

    link: reactive[Link] = reactive(Link("connecting", ""), always_update=False)
    """The connection to the daemon; the banner and the pollers watch it."""

    def __init__(self, client: ApplianceClient, *, refresh_seconds: float = 1.5,
                 clock: Callable[[], datetime] | None = None,
                 open_pipeline: str | None = None, welcome: str | None = None) -> None:
        super().__init__()
        self.client = client
        self.refresh_seconds = refresh_seconds
        self.clock = clock or (lambda: datetime.now(UTC))
        self.pipelines: list[str] = []
        self._open_pipeline = open_pipeline
        self._welcome = welcome
        self.set_reactive(ApplianceApp.link, Link("connecting", client.url))
        self._set_subtitle()

    def _set_subtitle(self) -> None:
        mode = "" if self.client.can_admin else " · read-only (no admin token)"
        self.sub_title = f"{self.client.url}{mode}"

    def get_default_screen(self) -> Screen:
        return OverviewScreen()

    def on_mount(self) -> None:
        if self._open_pipeline:
            self.open_pipeline(self._open_pipeline)
        if self._welcome:
            self.notify(self._welcome, title="Welcome", timeout=20, markup=False)

    async def on_unmount(self) -> None:
        await self.client.aclose()

    # --- the connection ----------------------------------------------------------------

    def connection_ok(self) -> None:
        if self.link.state != "up":
            self.workers.cancel_group(self, "reconnect")
            self.link = Link("up", self.client.url)

    def connection_lost(self, exc: DaemonUnavailable) -> None:
        if self.link.state == "down":
            return
        self.link = Link("down", self.client.url, exc.reason, since=self.clock())
        self.post_message(ConnectionLost(self.client.url, exc.reason))
        self.reconnect()

    @work(exclusive=True, group="reconnect", exit_on_error=False)
    async def reconnect(self) -> None:
        """Try again with a growing pause (up to 5 s) until the daemon answers."""
        delay = min(0.5, self.refresh_seconds)
        attempt = 0
        while True:
            attempt += 1
            self.link = replace(self.link, attempt=attempt, next_retry_s=delay)
            await asyncio.sleep(delay)
            if self.client.rediscover():
                self._set_subtitle()
            try:
                await self.client.health()
            except DaemonUnavailable as exc:
                self.link = replace(self.link, url=self.client.url, reason=exc.reason)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except ApiError:
                pass  # it answers: the pollers will say what is wrong
            break
        self.link = Link("up", self.client.url)
        self.post_message(ConnectionRestored(self.client.url))
        self.notify(f"The daemon at {self.client.url} answers again.", title="Reconnected",
                    markup=False)

    @on(Worker.StateChanged)
    def _on_worker_failed(self, event: Worker.StateChanged) -> None:
        """Whatever a worker did not expect is told, never raised: the console stays up."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        self.log.error("worker failed", worker=event.worker.name, error=repr(error))
        self.notify(f"{type(error).__name__}: {error}", markup=False,
                    title=f"{event.worker.name or 'a background task'} failed",
                    severity="error", timeout=10)

    # --- actions -----------------------------------------------------------------------

    def open_pipeline(self, name: str) -> None:
        if isinstance(self.screen, PipelineScreen):
            if self.screen.pipeline == name:
                return
            self.pop_screen()
        self.push_screen(PipelineScreen(name))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Help", "What each screen shows, and every key", self.action_help)
        if hasattr(screen, "action_refresh"):
            yield SystemCommand("Refresh now", "Fetch everything from the daemon again",
                                screen.action_refresh)
        if hasattr(screen, "commands"):
            yield from screen.commands()
        # The palette reads titles and help as markup: a name is escaped there.
        for name in self.pipelines:
            shown = fmt.markup_safe(name)
            yield SystemCommand(f"Open pipeline {shown}",
                                f"Data, models, drift, traffic and jobs of {shown}",
                                lambda name=name: self.open_pipeline(name))
        for name in self.pipelines:
            shown = fmt.markup_safe(name)
            yield SystemCommand(f"Retrain {shown}",
                                f"Start a training job for {shown} (asks first)",
                                lambda name=name: self.retrain(name))
        yield from super().get_system_commands(screen)

    def retrain(self, name: str) -> None:
        from tui.screens.pipeline import confirm_retrain

        confirm_retrain(self, name)


def make_app(url: str, token: str | None = None, *,
             transport: httpx.AsyncBaseTransport | None = None,
             discover: Callable[[], str | None] | None = None,
             refresh_seconds: float = 1.5, clock: Callable[[], datetime] | None = None,
             open_pipeline: str | None = None, welcome: str | None = None,
             read_token: str | None = None) -> ApplianceApp:
    """The console on one daemon; the CLI, the demo and the tests all build it here.
    ``token`` is the admin token (actions), ``read_token`` the one reads send when the
    daemon listens beyond loopback (else the admin token is sent)."""
    # Reads carry a token (the admin token when there is no read token): whatever answers
    # proves it holds it first, as before an admin call, so a program holding the port
    # while the daemon is down never gets it.
    client = ApplianceClient(url, token, transport=transport, discover=discover,
                             read_token=read_token, check_reads=True)
    return ApplianceApp(client, refresh_seconds=refresh_seconds, clock=clock,
                        open_pipeline=open_pipeline, welcome=welcome)


def run(url: str, token: str | None = None, *, discover: Callable[[], str | None] | None = None,
        refresh_seconds: float = 1.5, open_pipeline: str | None = None,
        welcome: str | None = None, read_token: str | None = None) -> int:
    make_app(url, token, discover=discover, refresh_seconds=refresh_seconds,
             open_pipeline=open_pipeline, welcome=welcome, read_token=read_token).run()
    return 0
