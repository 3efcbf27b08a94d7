"""The README keeps up with the code: every setting and every command is documented."""

from __future__ import annotations

from appliance.cli import cli
from appliance.core import reference
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_config_reference():
    missing = [key for key, _, _ in reference() if f"`{key}`" not in README]
    assert not missing, f"README config reference lacks {missing}"


def test_every_command_is_in_the_readme():
    missing = [name for name in cli.commands if f"appliance {name}" not in README]
    assert not missing


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert "<!-- test-command -->" in README and "test-command" in ci
