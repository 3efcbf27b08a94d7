"""Text from the daemon is shown as it is, never read as markup: a pipeline, a file, a
column, an event, a reason or an error holding `[`...`]` (`Temperature [C]`, `[red]x.csv`,
`[/]`) is drawn as those characters on every screen, and never crashes the console."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
from textual.command import CommandList, CommandPalette
from textual.content import Content
from textual.widgets import Static
from textual.widgets._data_table import default_cell_formatter

from appliance.api_types import (
    DriftFeature,
    ErrorBody,
    EventInfo,
    EventList,
    FeatureSetList,
    Identity,
    IngestionInfo,
    IngestionList,
    JobInfo,
    JobsResponse,
    ModelList,
    PipelineList,
    ScheduledJob,
    identity_proof,
)
from tests.tui import tui_fixture as fx
from tests.tui.test_tui import SIZE, plain, text_of, until
from tui.app import make_app
from tui.screens.overview import OverviewScreen
from tui.screens.pipeline import PipelineScreen
from tui.widgets.drift_bars import DriftBars
from tui.widgets.event_feed import EventFeed
from tui.widgets.filter_table import FilterTable

NAME = "a[b]"  # the daemon refuses such a folder name; the console must not trust that
FILE = "[red]x.csv"
CLOSE = "[/]"
COLUMN = "Temperature [C]"
REASON = f"column `{COLUMN}`: value `{CLOSE}` in [bold]{FILE}[/bold] is not a number"


def _hostile(struct: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(struct, **changes)


def hostile_routes() -> dict[str, Any]:
    base = fx.routes()
    summary = _hostile(fx.PIPELINES[0], name=NAME)
    other = _hostile(fx.PIPELINES[2], name=CLOSE)
    detail = _hostile(fx.DETAIL, name=NAME, target=CLOSE,
                      schema={**fx.SCHEMA, COLUMN: "Float64", CLOSE: "String"})
    ingestions = [
        IngestionInfo(id=2, file_name=FILE, status="rejected", code="bad_value", reason=REASON,
                      details={}, warnings=[], rows=None, columns=None, size_bytes=10,
                      sha256="ab" * 32, dataset_version=None, received_at=fx.iso(2),
                      finished_at=fx.iso(2), duration_ms=1.0),
        IngestionInfo(id=1, file_name=f"{CLOSE}ok.csv", status="accepted", code=None,
                      reason=None, details={}, warnings=[f"extra column `{CLOSE}` dropped"],
                      rows=100, columns=3, size_bytes=10, sha256="cd" * 32, dataset_version=1,
                      received_at=fx.iso(5), finished_at=fx.iso(5), duration_ms=1.0),
    ]
    models = [_hostile(m, decision=f"vs {CLOSE}: better", lineage={**m.lineage,
                                                                  "trigger": "[b]manual"})
              for m in fx.MODELS]
    drift = fx._drift()
    drift = _hostile(drift, pipeline=NAME, latest=_hostile(
        drift.latest, pipeline=NAME, source=CLOSE,
        features=[DriftFeature(feature=COLUMN, kind="numeric", psi=0.3, threshold=0.2,
                               drifted=True),
                  DriftFeature(feature=CLOSE, kind="categorical", psi=0.01, threshold=0.2,
                               drifted=False)]))
    jobs = JobsResponse(
        pipeline=NAME,
        scheduled=[ScheduledJob(id="j", pipeline=NAME, name=f"retrain {NAME}",
                                schedule=f"cron {CLOSE}", next_run=fx.iso(-60))],
        history=[JobInfo(id=1, pipeline=NAME, kind="train", trigger="[b]manual",
                         status="failed", started_at=fx.iso(3), finished_at=fx.iso(2.9),
                         model_version=None, error=f"ValueError: {REASON}")])
    feature_sets = FeatureSetList(feature_sets=[_hostile(
        fx.FEATURE_SETS.feature_sets[0], name="info", key=CLOSE, used_by=[NAME])])
    events = EventList(events=[
        EventInfo(id=3, ts=fx.iso(1), kind="refused", level="warning", pipeline=NAME,
                  message=f"{FILE}: {REASON}", details={}),
        EventInfo(id=2, ts=fx.iso(2), kind="drift_detected", level="warning", pipeline=NAME,
                  message=f"1 of 2 features drifted ({COLUMN}, {CLOSE})", details={}),
        EventInfo(id=1, ts=fx.iso(3), kind=f"odd{CLOSE}", level="info", pipeline=NAME,
                  message=CLOSE, details={}),
    ])
    p = f"/v1/pipelines/{NAME}"
    return {
        "/health": base[("GET", "/health")],
        "/v1/pipelines": PipelineList(pipelines=[summary, other]),
        p: detail,
        f"{p}/models": ModelList(pipeline=NAME, models=models),
        f"{p}/ingestions": IngestionList(pipeline=NAME, ingestions=ingestions),
        f"{p}/jobs": jobs,
        f"{p}/drift": drift,
        f"{p}/metrics": _hostile(fx._metrics_windows(), pipeline=NAME),
        "/v1/system": base[("GET", "/v1/system")],
        "/v1/feature-sets": feature_sets,
        "/v1/events": events,
        # An error whose message holds markup too.
        f"{p}/retrain": ErrorBody(code="busy", message=f"{NAME} is {CLOSE} busy"),
    }


def hostile_transport() -> httpx.MockTransport:
    table = hostile_routes()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/identity":  # it holds the token, as the fixture's does
            proof = Identity(port=80, proofs=[identity_proof(
                "t0ken", request.url.params["challenge"], 80)])
            return httpx.Response(200, content=msgspec.json.encode(proof),
                                  headers={"content-type": "application/json"})
        answer = table.get(request.url.path)
        if answer is None:
            answer = ErrorBody(code="not_found", message=f"no route {CLOSE}")
        status = 409 if isinstance(answer, ErrorBody) and answer.code == "busy" else (
            404 if isinstance(answer, ErrorBody) else 200)
        if request.url.path == "/v1/events" and int(request.url.params.get("after", 0)):
            answer = EventList(events=[])
        return httpx.Response(status, content=msgspec.json.encode(answer),
                              headers={"content-type": "application/json"})

    return httpx.MockTransport(handle)


def title_of(widget: Any) -> str:
    """A border title as drawn (Textual hands it back as markup)."""
    return Content.from_markup(widget.border_title or "").plain


def drawn_cells(table: FilterTable) -> list[str]:
    """Each row as DataTable draws it: its formatter reads a str cell as markup."""
    return [" ".join(default_cell_formatter(c).plain for c in table.get_row(row.key))
            for row in table.ordered_rows]


def drawn(static: Static) -> str:
    """A Static as drawn: a str given to it is read as markup."""
    visual = static.visual
    return visual.plain if isinstance(visual, Content) else text_of(static)


def shown(app: Any) -> str:
    """Every table cell, static text, border title and drift bar on the current screen,
    as drawn."""
    screen = app.screen
    parts: list[str] = []
    for table in screen.query(FilterTable):
        parts += drawn_cells(table)
        parts.append(title_of(table))
    for static in screen.query(Static):
        parts.append(drawn(static))
    for bars in screen.query(DriftBars):
        parts.append(plain(bars.render()))
    return "\n".join(parts)


async def test_markup_in_the_daemons_text_is_shown_as_it_is():
    app = make_app("http://appliance.test", "t0ken", transport=hostile_transport(),
                   clock=fx.clock, refresh_seconds=3600)
    async with app.run_test(size=SIZE) as pilot:
        feed = app.screen.query_one(EventFeed)
        await until(pilot, lambda: feed.row_count == 3, 5, "the events")
        await pilot.pause()
        overview = shown(app)
        assert f"{NAME} serving" in overview and f"{CLOSE} waiting for data" in overview
        assert f"{NAME} refused {FILE}: column" in overview and f"odd{CLOSE}" in overview
        feed.focus()
        await pilot.press("down", "up")
        detail = drawn(app.screen.query_one("#event-detail", Static))
        assert f"{FILE}: {REASON}" in detail and NAME in detail
        assert not app.screen.query_one("#problem", Static).has_class("-shown")

        app.open_pipeline(NAME)
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        await pilot.pause()
        screen = app.screen
        files = screen.query_one("#ingestions", FilterTable)
        await until(pilot, lambda: files.row_count == 2, 5, "the files")
        await pilot.pause()
        data = shown(app)
        for text in (FILE, REASON, COLUMN, CLOSE, f"{CLOSE}ok.csv", f"{NAME} · "):
            assert text in data, text
        files.focus()
        await pilot.press("down")
        assert f"extra column `{CLOSE}` dropped" in drawn(
            screen.query_one("#ingestion-detail", Static))
        # A filter typed with markup in it.
        await pilot.press("slash", *CLOSE, "enter")
        assert files.row_count == 1
        assert f"filter “{CLOSE}”: 1 of 2" in title_of(files)
        await pilot.press("slash", "escape")

        for tab, table_id, expected in [("2", "#models-table", [f"vs {CLOSE}: better",
                                                                "[b]manual"]),
                                        ("3", None, [COLUMN, CLOSE]),
                                        ("5", "#history", [f"ValueError: {REASON}",
                                                           f"cron {CLOSE}", f"retrain {NAME}",
                                                           "[b]manual"])]:
            await pilot.press(tab)
            if table_id:
                table = screen.query_one(table_id, FilterTable)
                await until(pilot, lambda table=table: table.row_count, 5, table_id)
            else:
                await pilot.pause(0.3)
            await pilot.pause()
            text = shown(app)
            for item in expected:
                assert item in text, (tab, item)
            assert not screen.query_one("#problem", Static).has_class("-shown"), text_of(
                screen.query_one("#problem", Static))

        # A problem the daemon answered with, shown above the tabs.
        screen.show_problem(f"{REASON} (bad_value)")
        await pilot.pause()
        assert drawn(screen.query_one("#problem", Static)) == f"{REASON} (bad_value)"
        screen.show_problem(None)

        # The command palette reads its titles as markup: the names are escaped there.
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"open pipeline")
        commands = app.screen.query_one(CommandList)
        await until(pilot, lambda: commands.option_count >= 2, 5, "the commands")
        offered = [commands.get_option_at_index(i).prompt.plain
                   for i in range(commands.option_count)]
        assert any(f"Open pipeline {NAME}\n" in o for o in offered), offered
        assert any(f"Open pipeline {CLOSE}\n" in o for o in offered), offered
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the pipeline")

        # An error from the daemon, told in a notification.
        await pilot.press("r", "y")
        await until(pilot, lambda: any(f"{NAME} is {CLOSE} busy" in str(n.message)
                                       for n in app._notifications), 5, "the refusal")
        await pilot.pause()
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), 5, "the overview")
        await pilot.pause()
