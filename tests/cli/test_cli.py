"""The command line: every command has help, and ingest drops files like a person would."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from tests.conftest import SAMPLES

COMMANDS = ["run", "demo", "tui", "status", "ingest", "train", "models", "promote", "predict",
            "features", "release", "discard",
            "doctor", "backup", "pipeline"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_ingest_drops_the_file_in_the_inbox(tmp_path):
    state = tmp_path / "s"
    result = CliRunner().invoke(cli, ["ingest", str(SAMPLES / "machines_01.csv"),
                                      "--pipeline", "machines", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    dropped = state / "inbox/machines/machines_01.csv"
    assert dropped.read_bytes() == (SAMPLES / "machines_01.csv").read_bytes()
    assert [p.name for p in dropped.parent.iterdir()] == ["machines_01.csv"]


def test_ingest_refuses_a_bad_pipeline_name(tmp_path):
    result = CliRunner().invoke(cli, ["ingest", str(SAMPLES / "machines_01.csv"),
                                      "--pipeline", "../etc", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a valid pipeline name" in result.output


def test_admin_commands_against_the_daemon(machines_state, start_daemon):
    from tests.conftest import drop

    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    runner = CliRunner()
    args = ["--state-dir", str(machines_state)]
    out = runner.invoke(cli, ["status", *args])
    assert out.exit_code == 0 and "machines" in out.output and "production=v1" in out.output
    out = runner.invoke(cli, ["models", "machines", *args])
    assert out.exit_code == 0 and "v1" in out.output and "production" in out.output
    out = runner.invoke(cli, ["predict", "machines", *args, "--json",
                              '{"timestamp": "2026-03-01T10:00:00", "machine_id": "M-007", '
                              '"machine_type": "press", "site": "south", "temperature_c": 71.5,'
                              ' "vibration_mm_s": 2.9, "pressure_bar": 7.6, "rpm": 1480, '
                              '"humidity_pct": null, "hours_since_service": 820.0}'])
    assert out.exit_code == 0, out.output
    assert '"model_version": 1' in out.output
    out = runner.invoke(cli, ["predict", "machines", *args, "--json", '{"rpm": 1}'])
    assert out.exit_code == 1 and "missing" in out.output
    out = runner.invoke(cli, ["promote", "machines", "1", *args])
    assert out.exit_code == 0 and "v1 is production" in out.output
