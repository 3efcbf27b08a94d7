"""The fleet console on fixed data: what it shows, that a box that does not prove it holds
the token never gets it, that a dead box is "down" and asked again later, and the fleet
file's checks. Snapshots at 120x30 on a frozen clock (update with --snapshot-update)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from textual.pilot import Pilot

from tests.tui import tui_fixture
from tests.tui.fleet_fixture import BOXES, fleet_app
from tests.tui.test_tui import plain, until
from tui.fleet.app import FleetApp
from tui.fleet.config import FleetFileError, load_fleet
from tui.fleet.screen import FleetEvents, FleetScreen, FleetTable
from tui.screens.base import FilterBar
from tui.screens.overview import OverviewScreen
from tui.screens.pipeline import PipelineScreen
from tui.widgets.pipeline_table import PipelineTable

SIZE = (120, 30)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def polled(app: FleetApp) -> bool:
    return all(s.state != "connecting" for s in app.poller.states.values())


async def settled(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, FleetApp)
    await until(pilot, lambda: polled(app), timeout=10, what="every box polled once")
    if isinstance(app.screen, FleetScreen):
        app.screen.redraw(force=True)
    for _ in range(3):
        await pilot.pause()


def table_rows(table) -> dict[str, list[str]]:
    return {row.key.value: [plain(c) for c in table.get_row(row.key)]
            for row in table.ordered_rows}


async def test_every_box_with_its_pipelines_and_a_dead_one_is_down_not_an_error():
    seen: dict[str, list[httpx.Request]] = {}
    app = fleet_app(seen)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        rows = table_rows(app.screen.query_one(FleetTable))
        assert list(rows) == ["line-1\tmachines", "line-1\tenergy", "line-1\tvision",
                              "line-2\tenergy", "line-2\tvision", "shop-3\t", "shop-4\t"]
        line1 = rows["line-1\tmachines"]
        assert line1[:6] == ["line-1", "up", "machines", "v3", "serving", "drift 41%"]
        assert line1[6:9] == ["0.2%", "6.4ms", "13m ago"]
        newest = tui_fixture._system().samples[-1]  # the newest resource sample
        assert line1[9:] == [f"{newest.memory_percent:.0f}%", "38.2 GiB"]
        assert rows["line-2\tenergy"][2:8] == ["energy", "v7", "serving", "ok", "3.4%",
                                               "38.5ms"]
        # Nothing answers at shop-3: down (since the first poll), with why, not an error.
        # (the reason is cropped to the room the table has; the line below it has it all)
        assert rows["shop-3\t"][:2] == ["shop-3", "down <1m"]
        assert "connection refused".startswith(rows["shop-3\t"][2].rstrip("…"))
        shop3 = app.poller.states["shop-3"]
        assert (shop3.reason, shop3.next_poll_s) == ("connection refused", 60)  # asked later
        app.screen.query_one(FleetTable).move_cursor(row=5)
        await pilot.pause()
        detail = plain(app.screen.query_one("#fleet-detail").content)
        assert detail == ("shop-3 · http://shop-3.test · down since 10:00:00 (connection "
                          "refused); next try in 60 s · read-only (no admin token)")
        app.screen.query_one(FleetTable).move_cursor(row=3)  # line-2's energy
        await pilot.pause()
        detail = plain(app.screen.query_one("#fleet-detail").content)
        assert ("· energy: no drift: 0 of 6 features past their threshold on 1,200 rows"
                in detail), detail
        assert rows["line-1\tenergy"][:2] == ["line-1", ""]  # the box on each of its rows
        # shop-4 answers but does not hold the token the fleet file gives for it.
        assert rows["shop-4\t"][1] == "refused <1m"
        assert "does not hold this token" in app.poller.states["shop-4"].reason
        # The fleet's latest events, newest first, each with its box.
        events = table_rows(app.screen.query_one(FleetEvents))
        first = next(iter(events.values()))
        assert first[1:4] in (["line-1", "energy", "training started"],
                              ["line-2", "energy", "training started"])
    # A token went only to a box that proved it holds it, right before.
    for box in BOXES:
        requests = seen[box.name]
        for i, r in enumerate(requests):
            if "authorization" in r.headers:
                assert any(q.url.path == "/v1/identity" for q in requests[:i]), box.name
    assert not any("authorization" in r.headers for r in seen["shop-4"])
    assert [r.url.path for r in seen["shop-4"]] == ["/v1/identity"]


async def test_enter_opens_the_boxs_own_screens_and_escape_comes_back():
    app = fleet_app()
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        table = app.screen.query_one(FleetTable)
        table.move_cursor(row=3)  # line-2's first pipeline
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), what="box")
        assert app.box is not None and app.box.name == "line-2"
        assert app.client.url == "http://line-2.test" and not app.client.can_admin
        pipelines = app.screen.query_one(PipelineTable)
        await until(pilot, lambda: pipelines.row_count == 2, what="line-2's pipelines")
        await pilot.press("enter")  # its pipeline's own screen
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), what="pipeline")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), what="back")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), what="the fleet")
        assert app.box is None
        table = app.screen.query_one(FleetTable)
        table.move_cursor(row=0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), what="line-1")
        assert app.client.url == "http://line-1.test" and app.client.can_admin


def test_fleet_overview(snap_compare):
    assert snap_compare(fleet_app(), terminal_size=SIZE, run_before=settled)


def test_a_box_opened_from_the_fleet(snap_compare):
    async def run_before(pilot: Pilot) -> None:
        await settled(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, OverviewScreen), what="box")
        for _ in range(3):
            await pilot.pause()
            await pilot.app.workers.wait_for_complete()

    assert snap_compare(fleet_app(), terminal_size=SIZE, run_before=run_before)


# --- the fleet file ----------------------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_fleet_file_reads_tokens_from_files_beside_it(tmp_path: Path):
    write(tmp_path / "a.read_token", "r3ad\n")
    write(tmp_path / "a.token", "adm1n\n")
    fleet = write(tmp_path / "fleet.toml", """
[[box]]
name = "a"
url = "http://10.0.0.1:8080/"
token_file = "a.read_token"
admin_token_file = "a.token"

[[box]]
name = "b"
url = "https://b.example:8443"
""", 0o644)
    a, b = load_fleet(fleet)
    assert (a.name, a.url, a.token, a.admin_token) == ("a", "http://10.0.0.1:8080", "r3ad",
                                                      "adm1n")
    assert (b.token, b.admin_token) == (None, None)


@pytest.mark.parametrize(("text", "expected"), [
    ('[[box]]\nname = "a"\n', "`url` must be http://host:port"),
    ('[[box]]\nurl = "http://a:1"\n', "`name` is missing"),
    ('[[box]]\nname = "a"\nurl = "ftp://a"\n', "`url` must be"),
    ('[[box]]\nname = "a"\nurl = "http://a:1"\n[[box]]\nname = "a"\nurl = "http://b:1"\n',
     "listed twice"),
    ('[[box]]\nname = "a"\nurl = "http://a:1"\ntoken = "x"\ntoken_file = "t"\n', "not both"),
    ('[[box]]\nname = "a"\nurl = "http://a:1"\ntokn = "x"\n', "unknown key(s) tokn"),
    ('[[box]]\nname = "a"\nurl = "http://a:1"\ntoken_file = "missing"\n', "can't be read"),
    ("", "no boxes"),
    ("[[box]\n", "not valid TOML"),
], ids=["no-url", "no-name", "bad-scheme", "twice", "both-tokens", "typo", "no-token-file",
        "empty", "bad-toml"])
def test_fleet_file_errors_name_the_box_and_the_field(tmp_path: Path, text: str,
                                                      expected: str):
    fleet = write(tmp_path / "fleet.toml", text)
    with pytest.raises(FleetFileError) as err:
        load_fleet(fleet)
    assert expected in str(err.value) and str(fleet) in str(err.value)


def test_tokens_others_can_read_are_refused(tmp_path: Path):
    write(tmp_path / "t", "secret", 0o644)
    fleet = write(tmp_path / "fleet.toml",
                  '[[box]]\nname = "a"\nurl = "http://a:1"\ntoken_file = "t"\n')
    with pytest.raises(FleetFileError, match=r"readable by others.*chmod 600"):
        load_fleet(fleet)
    inline = write(tmp_path / "inline.toml",
                   '[[box]]\nname = "a"\nurl = "http://a:1"\ntoken = "secret"\n', 0o640)
    with pytest.raises(FleetFileError, match=r"fleet file, which holds tokens"):
        load_fleet(inline)


# --- how long a box has been down, and how often it is asked -------------------------------


def test_down_says_how_long_in_a_unit_that_changes_at_most_once_a_minute():
    from datetime import timedelta

    from tui.fleet.poller import BoxState
    from tui.fleet.screen import state_text

    now = tui_fixture.NOW
    state = BoxState(BOXES[2], state="down", since=now - timedelta(seconds=59))
    assert state_text(state, now).plain == "down <1m"
    for ago, shown in [(timedelta(minutes=3), "down 3m"), (timedelta(hours=5), "down 5h"),
                       (timedelta(days=3), "down 3d")]:
        state.since = now - ago
        assert state_text(state, now).plain == shown


async def test_a_dead_box_is_asked_again_later_and_later_and_at_once_when_it_answers():
    from tests.tui.fleet_fixture import answering, dead
    from tui.fleet.poller import FleetPoller

    box = BOXES[1]
    poller = FleetPoller([box], refresh=2, max_backoff=30, clock=tui_fixture.clock,
                         transports={box.name: dead()})
    pauses = [(await poller.poll(box.name)).next_poll_s for _ in range(6)]
    assert pauses == [4, 8, 16, 30, 30, 30]
    state = poller.states[box.name]
    assert (state.state, state.since, state.failures) == ("down", tui_fixture.NOW, 6)
    await poller.stop()
    poller = FleetPoller([box], refresh=2, max_backoff=30, clock=tui_fixture.clock,
                         transports={box.name: answering()})
    poller.states[box.name].state = "down"
    state = await poller.poll(box.name)
    assert (state.state, state.since, state.failures, state.next_poll_s) == ("up", None, 0, 2)
    await poller.stop()


async def test_fifty_boxes_some_hung_never_block_the_screen():
    """50 boxes, 10 of which accept and never answer: keys are handled while their polls
    wait (the polls are bounded at 2 x the timeout: 4 s), and they are down after it."""
    import asyncio

    from tests.tui.fleet_fixture import answering
    from tui.fleet.config import FleetBox

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    boxes = [FleetBox(name=f"box-{i:02d}", url=f"http://box-{i:02d}.test") for i in range(50)]
    transports = {b.name: (httpx.MockTransport(hang) if i % 5 == 0 else answering())
                  for i, b in enumerate(boxes)}
    app = FleetApp(boxes, transports=transports, clock=tui_fixture.clock,
                   refresh_seconds=3600, poll_timeout=2.0)
    async with app.run_test(size=SIZE) as pilot:
        states = app.poller.states
        await until(pilot, lambda: sum(s.state == "up" for s in states.values()) == 40,
                    timeout=10, what="the 40 answering boxes")
        assert sum(s.state == "connecting" for s in states.values()) == 10  # still waiting
        await pilot.press("slash", *"box-0")  # the filter opens while 10 polls hang
        assert app.screen.query_one(FilterBar).value == "box-0"
        assert sum(s.state == "connecting" for s in states.values()) == 10  # still hanging
        await until(pilot, lambda: all(s.state != "connecting" for s in states.values()),
                    timeout=5, what="the hung boxes given up on")
        hung = [s for s in states.values() if s.state == "down"]
        assert len(hung) == 10 and {s.reason for s in hung} == {"no answer in time"}


async def test_help_says_what_the_fleet_shows_then_what_a_box_shows():
    from textual.widgets import Markdown

    from tui.screens.help import HelpScreen

    app = fleet_app()
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = app.screen.query_one(Markdown).source
        assert text.startswith("# appliance fleet\n\n## The fleet")
        assert "## A pipeline" in text and "appliance console" not in text
