"""A batch held for suspect labels, in the console against the real daemon: the Data tab
shows it held with its numbers; `l` and `x` ask first; a cancelled question changes
nothing; discard, then release, and the daemon trains on it."""

from __future__ import annotations

import asyncio

import polars as pl
from textual.widgets import DataTable, Static

from tests.conftest import SAMPLES, copy_state, drop, wait_for
from tests.tui.test_tui import SIZE, column, move_to, rows, text_of, until
from tui.app import make_app
from tui.screens.confirm import ConfirmScreen
from tui.screens.pipeline import PipelineScreen
from tui.widgets.filter_table import FilterTable

TARGET = "failed_within_24h"


def status_of(daemon, name: str) -> str | None:
    items = daemon.get("/v1/pipelines/machines/ingestions").json()["ingestions"]
    return next((i["dataset_status"] for i in items if i["file_name"] == name), None)


async def answer(pilot, app, key: str, question: str, reply: str) -> None:
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
    assert question in text_of(app.screen.query_one("#question", Static))
    await pilot.press(reply)
    await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), 5, "the answer")


async def test_release_and_discard_a_held_batch_from_the_data_tab(trained_template, tmp_path,
                                                                  start_daemon):
    state = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(state)
    daemon.wait_ready_model("machines", 1)
    bad = tmp_path / "export_inverted.csv"
    rows_02 = pl.read_csv(SAMPLES / "machines_02.csv").head(600)
    rows_02.with_columns((1 - pl.col(TARGET)).alias(TARGET)).write_csv(bad)
    drop(state, "machines", bad)
    wait_for(lambda: status_of(daemon, bad.name) == "held", timeout=60, what="the hold")

    app = make_app(daemon.url, daemon.token, refresh_seconds=0.3)
    async with app.run_test(size=SIZE) as pilot:
        overview = app.screen.query_one("#pipelines", DataTable)
        await until(pilot, lambda: "machines" in rows(overview), 10, "the pipeline row")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        screen = app.screen
        assert isinstance(screen, PipelineScreen)
        files = screen.query_one("#ingestions", FilterTable)
        await until(pilot, lambda: "2" in rows(files), 10, "the held file")
        assert column(files, "2", "status") == "held"
        assert "1 held" in files.title
        assert "1 held (suspect labels)" in text_of(screen.query_one("#summary", Static))

        # A normal file: the keys are not offered.
        await move_to(pilot, files, "1")
        assert screen.check_action("release", ()) is False
        assert screen.check_action("discard", ()) is False

        # The held one: why, with the numbers, and the two keys.
        await move_to(pilot, files, "2")
        detail = text_of(screen.query_one("#ingestion-detail", Static))
        assert "export_inverted.csv held: data set v2 does not train" in detail
        assert "suspect labels: v1 auc 0." in detail and "worse than the baseline" in detail
        assert "l: release it" in detail and "x: discard it" in detail
        assert screen.check_action("release", ()) and screen.check_action("discard", ())

        # Asked first; "no" changes nothing.
        await answer(pilot, app, "l", "Release data set v2 of machines for training?", "n")
        await pilot.pause(0.5)
        assert await asyncio.to_thread(status_of, daemon, bad.name) == "held"

        # Discard: the row says so, and the files stay.
        await answer(pilot, app, "x", "Discard data set v2 of machines?", "y")
        await until(pilot, lambda: column(files, "2", "status") == "discarded", 10,
                    "the discard")
        assert await asyncio.to_thread(status_of, daemon, bad.name) == "discarded"
        assert (state / "archive/machines" / bad.name).exists()
        assert screen.check_action("discard", ()) is False  # discarded: only a release

        # Release after all: the daemon trains on it.
        await answer(pilot, app, "l", "Release data set v2 of machines for training?", "y")
        await until(pilot, lambda: column(files, "2", "status") == "released", 10,
                    "the release")
    history = wait_for(lambda: len(h := daemon.get("/v1/pipelines/machines/jobs").json()[
        "history"]) == 2 and h[0]["status"] != "running" and h, timeout=60,
        what="the training on the released batch")
    assert history[0]["trigger"] == "new_data"  # type: ignore[index]
    models = daemon.get("/v1/pipelines/machines/models").json()["models"]
    assert [d["version"] for d in models[0]["lineage"]["datasets"]] == [1, 2]
