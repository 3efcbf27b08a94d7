"""The fleet console and `status --fleet` against three real daemons and one dead address:
every box up with what it serves, the dead one down (never an error), a box's own screens
behind enter, a daemon that stops turns down and is asked again with backoff."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from tests.conftest import ROOT, copy_state
from tests.tui.test_fleet import settled, table_rows
from tests.tui.test_tui import until
from tui.fleet.app import FleetApp
from tui.fleet.config import load_fleet
from tui.fleet.screen import FleetScreen, FleetTable
from tui.screens.overview import OverviewScreen
from tui.widgets.pipeline_table import PipelineTable

SIZE = (120, 30)


def dead_url() -> str:
    """An address where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def status_fleet(fleet: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", "status", "--fleet", str(fleet), "--timeout", "2",
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_fleet_of_three_daemons_and_a_dead_address(tmp_path, start_daemon,
                                                         trained_template):
    trained = start_daemon(copy_state(trained_template, tmp_path / "a"))
    (tmp_path / "b").mkdir()
    empty = start_daemon(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "appliance.toml").write_text("[server]\nread_token_required = true\n")
    guarded = start_daemon(tmp_path / "c")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"""
[[box]]
name = "a"
url = "{trained.url}"
token_file = "a/token"
admin_token_file = "a/token"

[[box]]
name = "b"
url = "{empty.url}"

[[box]]
name = "c"
url = "{guarded.url}"
token_file = "c/read_token"

[[box]]
name = "gone"
url = "{dead_url()}"
""")
    os.chmod(fleet, 0o600)

    code, out = await status_fleet(fleet, "--json")
    assert code == 1, out  # a box does not answer: cron hears of it
    boxes = {b["name"]: b for b in json.loads(out)["boxes"]}
    assert {n: b["state"] for n, b in boxes.items()} == {"a": "up", "b": "up", "c": "up",
                                                         "gone": "down"}
    # (httpx says "All connection attempts failed" for a refused port on some systems)
    assert boxes["gone"]["since"] is None  # one look can't say since when
    assert boxes["gone"]["reason"] == "connection refused"
    machines = boxes["a"]["pipelines"][0]
    assert (machines["name"], machines["production_version"]) == ("machines", 1)
    assert boxes["a"]["disk_free_bytes"] > 0 and boxes["a"]["events"]
    assert boxes["c"]["pipelines"] == []  # read with its read token, after its proof
    code, out = await status_fleet(fleet)
    lines = out.splitlines()
    assert lines[0].split() == ["box", "state", "pipeline", "model", "status", "drift",
                                "errors", "p99", "last", "data", "mem", "disk", "free"]
    assert lines[1].split()[:5] == ["a", "up", "machines", "v1", "serving"]
    assert lines[4].split()[:2] == ["gone", "down"]  # one look: not since when

    app = FleetApp(load_fleet(fleet), refresh_seconds=0.5, poll_timeout=2,
                   max_backoff=4)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        states = app.poller.states
        assert {n: s.state for n, s in states.items()} == {"a": "up", "b": "up", "c": "up",
                                                           "gone": "down"}
        rows = table_rows(app.screen.query_one(FleetTable))
        assert rows["a\tmachines"][:5] == ["a", "up", "machines", "v1", "serving"]
        assert rows["b\t"][2] == "no pipelines yet"
        assert rows["gone\t"][1].startswith("down")

        await pilot.press("enter")  # a's own screens, with a's admin token
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), what="box a")
        assert app.client.url == trained.url and app.client.can_admin
        table = app.screen.query_one(PipelineTable)
        await until(pilot, lambda: table.row_count == 1, what="a's pipeline")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), what="the fleet")

        empty.stop()  # b goes away: down, asked again later and later
        await until(pilot, lambda: states["b"].state == "down", timeout=15, what="b down")
        await until(pilot, lambda: states["b"].failures >= 2, timeout=15, what="b retried")
        assert states["b"].next_poll_s > 0.5
        assert states["a"].state == "up" and states["c"].state == "up"
