"""The console driven by a pilot against the real daemon, as an operator would use it:
open a pipeline, read the models, retrain and see the new version, roll back, read why a
file was refused, and live through the daemon going away and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rich.text import Text
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from tests.conftest import SAMPLES, drop, wait_for
from tui.app import ApplianceApp, make_app
from tui.messages import ConnectionLost, ConnectionRestored
from tui.screens.confirm import ConfirmScreen
from tui.screens.pipeline import PipelineScreen
from tui.widgets.banner import ConnectionBanner
from tui.widgets.filter_table import FilterTable

SIZE = (100, 30)


async def until(pilot: Pilot, predicate: Callable[[], object], timeout: float = 30.0,
                what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def plain(cell: object) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def rows(table: DataTable) -> dict[str, list[str]]:
    return {row.key.value: [plain(c) for c in table.get_row(row.key)]
            for row in table.ordered_rows}


def text_of(widget: Static) -> str:
    return plain(widget.content)


def column(table: DataTable, key: str, name: str) -> str:
    labels = [c.key.value for c in table.ordered_columns]
    return rows(table)[key][labels.index(name)]


def production_of(screen: PipelineScreen) -> str | None:
    table = screen.query_one("#models-table", FilterTable)
    found = [k for k, cells in rows(table).items() if "production" in cells]
    return found[0] if found else None


async def move_to(pilot: Pilot, table: FilterTable, key: str) -> None:
    table.focus()
    for _ in range(table.row_count * 2 + 2):
        if table.highlighted_key == key:
            return
        index = [r.key.value for r in table.ordered_rows].index(key)
        await pilot.press("down" if table.cursor_row < index else "up")
    assert table.highlighted_key == key


async def promote(pilot: Pilot, app: ApplianceApp, screen: PipelineScreen, version: str,
                  word: str) -> None:
    table = screen.query_one("#models-table", FilterTable)
    await move_to(pilot, table, version)
    await pilot.press("p")
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
    question = text_of(app.screen.query_one("#question", Static))
    assert word in question and f"v{version}" in question, question
    await pilot.press("y")
    await until(pilot, lambda: production_of(screen) == version, 30,
                f"v{version} to be production")


async def test_operator_loop_against_the_real_daemon(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    drop(machines_state, "machines", SAMPLES / "machines_broken.csv")

    app = make_app(daemon.url, daemon.token, refresh_seconds=0.3)
    async with app.run_test(size=SIZE) as pilot:
        # The overview lists the pipeline, serving v1 with its metric.
        table = app.screen.query_one("#pipelines", DataTable)
        await until(pilot, lambda: "machines" in rows(table), what="the pipeline row")
        assert column(table, "machines", "status") == "serving"
        assert column(table, "machines", "model") == "v1"
        assert column(table, "machines", "metric").startswith("auc 0.")
        assert float(column(table, "machines", "rps")) == 0.0  # no traffic yet

        # enter opens it; the Data tab shows the refused file and why.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        screen = app.screen
        assert isinstance(screen, PipelineScreen)
        files = screen.query_one("#ingestions", FilterTable)
        await until(pilot, lambda: any("refused" in r for r in rows(files).values()),
                    what="the refused file")
        refused = next(k for k, r in rows(files).items() if "refused" in r)
        assert "missing_target" in rows(files)[refused]
        await move_to(pilot, files, refused)
        reason = text_of(screen.query_one("#ingestion-detail", Static))
        assert "machines_broken.csv refused" in reason
        assert "`failed_within_24h` not found" in reason
        assert "[pipelines.machines] target" in reason  # what to do about it
        schema = rows(screen.query_one("#schema", FilterTable))
        assert schema["failed_within_24h"][2] == "target"
        assert schema["reading_id"][2] == "id"

        # Models: v1 in production, with metrics and lineage.
        await pilot.press("2")
        models = screen.query_one("#models-table", FilterTable)
        await until(pilot, lambda: "1" in rows(models), what="the models")
        assert production_of(screen) == "1"
        assert column(models, "1", "data") == "v1 · 3,000 rows"
        detail = text_of(screen.query_one("#model-detail", Static))
        assert "gate: vs the baseline" in detail and "lineage: new_data" in detail
        # The backtest: every version on the newest held-out rows (here v1's own).
        await until(pilot, lambda: "newest rows" in text_of(
            screen.query_one("#model-detail", Static)), what="the backtest")
        detail = text_of(screen.query_one("#model-detail", Static))
        assert "newest rows (every version on v1's 600 held-out rows): auc 0." in detail
        assert column(models, "1", "same") == column(models, "1", "own")
        assert column(models, "1", "vs") == "serving"

        # Retrain, confirmed: a new version appears.
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
        assert "Retrain machines now?" in text_of(app.screen.query_one("#question", Static))
        await pilot.press("y")
        await until(pilot, lambda: "2" in rows(models), 60, "v2 to appear")
        assert column(models, "2", "trigger") == "manual"  # from its lineage

        # Promote the version that is not production, then roll back to the other one:
        # production follows both times.
        first = "2" if production_of(screen) == "1" else "1"
        other = "1" if first == "2" else "2"
        await promote(pilot, app, screen, first, "Promote" if first == "2" else "Roll back")
        await promote(pilot, app, screen, other, "Roll back" if other == "1" else "Promote")
        assert (await asyncio.to_thread(daemon.get, "/v1/pipelines/machines")).json()[
            "production"]["version"] == int(other)

        # A cancelled confirmation changes nothing.
        await move_to(pilot, models, first)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
        await pilot.press("n")
        await pilot.pause(0.5)
        assert production_of(screen) == other

        # Back on the overview, the table says the same.
        await pilot.press("escape")
        table = app.screen.query_one("#pipelines", DataTable)
        await until(pilot, lambda: column(table, "machines", "model") == f"v{other}",
                    what="the overview to follow")


async def test_banner_while_the_daemon_is_away_and_gone_when_it_is_back(state_root,
                                                                         start_daemon):
    daemon = start_daemon(state_root)
    port = daemon.url.rsplit(":", 1)[1]
    seen: list[Message] = []
    app = make_app(daemon.url, daemon.token, refresh_seconds=0.2)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        banner = app.screen.query_one(ConnectionBanner)
        await until(pilot, lambda: app.link.state == "up", 10, "the first answer")
        assert not banner.has_class("-down")

        await asyncio.to_thread(daemon.stop)
        await until(pilot, lambda: banner.has_class("-down"), 10, "the banner")
        assert "No answer from the daemon at " + daemon.url in text_of(banner)
        assert "Reconnecting by itself" in text_of(banner)
        await pilot.press("r")  # keys still work while it is away; nothing crashes
        await pilot.press("escape")

        # Back on the same port: the banner goes by itself, and the data refreshes.
        again = await asyncio.to_thread(start_daemon, state_root, "--port", port)
        assert again.url == daemon.url
        await until(pilot, lambda: not banner.has_class("-down"), 20, "the banner to go")
        assert app.link.state == "up"
        assert app.is_running and app.return_code is None
    kinds = [type(m) for m in seen]
    assert ConnectionLost in kinds and ConnectionRestored in kinds


async def test_a_daemon_that_moved_to_another_port_is_found_again(state_root, start_daemon):
    daemon = start_daemon(state_root)
    runfile = state_root / "daemon.json"

    def discover() -> str | None:
        import json

        try:
            return json.loads(runfile.read_text())["url"]
        except (OSError, ValueError):
            return None

    app = make_app(daemon.url, daemon.token, refresh_seconds=0.2, discover=discover)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.link.state == "up", 10, "the first answer")
        await asyncio.to_thread(daemon.stop)
        await until(pilot, lambda: app.link.state == "down", 10, "the connection to drop")
        moved = await asyncio.to_thread(start_daemon, state_root)  # port 0: a new port
        await until(pilot, lambda: app.link.state == "up", 20, "the new port to be found")
        assert app.client.url == moved.url
        assert moved.url in app.sub_title


async def test_the_data_tab_shows_the_feature_sets_a_pipeline_joins(state_root, start_daemon,
                                                                     tmp_path):
    from tests.features.test_featurestore_e2e import machine_info, start

    daemon = start(state_root, start_daemon)
    app = make_app(daemon.url, daemon.token, refresh_seconds=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#pipelines", DataTable)
        await until(pilot, lambda: "wear" in rows(table), 10, "the pipeline row")
        assert "machine_info" not in rows(table)  # a feature set is not a pipeline
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        screen = app.screen
        sets = screen.query_one("#feature-sets", FilterTable)
        await until(pilot, lambda: "machine_info" in rows(sets), 10, "the feature set")
        assert column(sets, "machine_info", "keys") == "none yet"
        assert sets.border_subtitle == "no values yet: drop a file into inbox/machine_info/"

        # A feature-set file dropped: the same poller brings its keys and freshness.
        info = tmp_path / "machine_info.csv"
        machine_info().write_csv(info)
        drop(state_root, "machine_info", info)
        await until(pilot, lambda: column(sets, "machine_info", "keys") == "40", 30,
                    "the online store's keys")
        assert column(sets, "machine_info", "key") == "machine_id"
        assert column(sets, "machine_info", "rows") == "60"
        assert column(sets, "machine_info", "updated").endswith("ago") or \
            column(sets, "machine_info", "updated") == "now"
        assert column(sets, "machine_info", "event").endswith("ago")  # its newest updated_at
        assert sets.border_subtitle == ""
        assert sets.display


async def test_the_demos_drifted_file_shows_as_drift_in_the_overview(state_root, start_daemon):
    # The demo's config and files, in its order: each new file retrains, as in the demo.
    (state_root / "appliance.toml").write_text((SAMPLES / "appliance.toml").read_text())
    daemon = start_daemon(state_root)
    drop(state_root, "machine_info", SAMPLES / "machine_info.csv")

    def trainings_done(n: int) -> bool:
        jobs = daemon.get("/v1/pipelines/machines/jobs").json()["history"]
        return len(jobs) >= n and all(j["status"] != "running" for j in jobs) and \
            daemon.get("/v1/pipelines/machines").json()["status"] != "training"

    for n, name in enumerate(["machines_01.csv", "machines_02.csv",
                              "machines_03_drifted.csv"], start=1):
        drop(state_root, "machines", SAMPLES / name)
        await asyncio.to_thread(wait_for, lambda n=n: trainings_done(n), 120, 0.2,
                                f"training on {name}")
    # About the model served now: when a retrained version was promoted, the newest data
    # set is checked again against its reference.
    production = daemon.get("/v1/pipelines/machines").json()["production"]
    assert production is not None, (
        daemon.get("/v1/pipelines/machines/jobs").json()["history"],
        [e["message"] for e in daemon.get("/v1/events", params={"limit": 40}).json()["events"]])
    served = production["version"]

    def checked() -> dict | None:
        body = daemon.get("/v1/pipelines/machines/drift").json()
        latest = body["latest"]
        return body if latest and latest["model_version"] == served else None

    drift = await asyncio.to_thread(wait_for, checked, 60, 0.2, "the served model's check")
    assert drift["status"] == "drift", drift["summary"]
    assert drift["latest"]["source"] == ("ingestion" if served < 3 else "newest_data")

    app = make_app(daemon.url, daemon.token, refresh_seconds=0.3)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#pipelines", DataTable)
        await until(pilot, lambda: "machines" in rows(table), what="the pipeline row")
        # The served model (retrained on the drifted file or not) is checked against the
        # newest data: fewer than half of the features moved, but they moved far.
        cell = column(table, "machines", "drift")
        assert cell.startswith("drift ") and cell.endswith("%"), cell
        await pilot.press("enter", "3")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        note = app.screen.query_one("#drift-note", Static)
        await until(pilot, lambda: text_of(note).startswith("DRIFT: 3 of 9 features (33%)"),
                    10, "the Drift tab's headline")
        assert "(severe: PSI" in text_of(note)
