"""`status --fleet` and `tui --fleet` refuse what they can't use, before any box is asked:
exit 2, with the file, the box and the field (the polls themselves: tests/tui/
test_fleet_daemons.py, against real daemons)."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from appliance.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_a_fleet_file_that_cant_be_used_exits_2_saying_why(tmp_path: Path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[box]]\nname = "a"\nurl = "http://a:1"\ntoken = "s3cret"\n')
    os.chmod(fleet, 0o644)
    for command in ("status", "tui"):
        done = run(command, "--fleet", str(fleet))
        assert done.exit_code == 2, done.output
        assert f"{fleet}: the fleet file, which holds tokens, is readable by others" in \
            done.output and f"chmod 600 {fleet}" in done.output
    fleet.write_text('[[box]]\nname = "a"\nurl = "a:1"\n')
    done = run("status", "--fleet", str(fleet))
    assert done.exit_code == 2 and f"{fleet}, box 1 (a): `url` must be" in done.output


def test_fleet_and_single_box_flags_do_not_mix(tmp_path: Path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[box]]\nname = "a"\nurl = "http://a:1"\n')
    done = run("status", "--fleet", str(fleet), "--url", "http://b:1")
    assert done.exit_code == 2 and "drop --url" in done.output
    done = run("tui", "--fleet", str(fleet), "--token", "x")
    assert done.exit_code == 2 and "drop --url, --token" in done.output
