"""What the console looks like, at 100x30, on fixed data and a frozen clock.

The app is built by the same factory as `appliance tui`, on a fixed daemon
(tests/tui_fixture.py) behind the real client. After a deliberate change of look, run
`pytest tests/test_tui_snapshots.py --snapshot-update` and read the report first.
"""

from __future__ import annotations

import time

import httpx
import pytest
from textual.pilot import Pilot

from tests.tui.tui_fixture import fixture_app

SIZE = (100, 30)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Times are shown in local time: pin it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def keys(*pressed: str):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        for key in pressed:
            await pilot.press(key)
            await settle(pilot)

    return run_before


def test_overview(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE, run_before=keys())


def test_data_tab_with_a_refused_file(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE,
                        run_before=keys("enter", "down"))


def test_data_tab_with_a_held_file(snap_compare):
    assert snap_compare(fixture_app(held=True), terminal_size=SIZE, run_before=keys("enter"))


def test_releasing_a_held_file_asks_first(snap_compare):
    assert snap_compare(fixture_app(held=True), terminal_size=SIZE,
                        run_before=keys("enter", "l"))


def test_models_tab(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE, run_before=keys("enter", "2"))


def test_drift_tab(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE, run_before=keys("enter", "3"))


def test_traffic_tab(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE, run_before=keys("enter", "4"))


def test_jobs_tab(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE, run_before=keys("enter", "5"))


def test_rollback_asks_first(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE,
                        run_before=keys("enter", "2", "down", "down", "p"))


def test_help(snap_compare):
    assert snap_compare(fixture_app(), terminal_size=SIZE, run_before=keys("question_mark"))


OLDER_DAEMON = frozenset({"/v1/system", "/v1/pipelines/machines/drift",
                          "/v1/pipelines/machines/metrics", "/v1/feature-sets"})


def test_a_daemon_without_monitoring_gets_calm_placeholders(snap_compare):
    assert snap_compare(fixture_app(missing=OLDER_DAEMON), terminal_size=SIZE,
                        run_before=keys("enter", "3"))


def test_banner_when_nothing_answers(snap_compare):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    from tests.tui.tui_fixture import clock
    from tui.app import make_app

    app = make_app("http://appliance.test", "t0ken", transport=httpx.MockTransport(refuse),
                   clock=clock, refresh_seconds=3600)
    app.reconnect = lambda: None  # hold still at the first failure, for the picture
    assert snap_compare(app, terminal_size=SIZE, run_before=keys())
