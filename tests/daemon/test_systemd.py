"""The unit file: systemd accepts it, and its sandbox rates an exposure of 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "appliance.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(.ci/run installs Debian's systemd package)")


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's real `appliance` (verify checks it)."""
    appliance = Path(sys.executable).parent / "appliance"
    assert appliance.exists(), "the console script is missing; pip install -e ."
    text = UNIT.read_text().replace("/opt/appliance/venv/bin/appliance", str(appliance))
    assert str(appliance) in text
    path = tmp_path / "appliance.service"
    path.write_text(text)
    return path


@needs_analyze
def test_systemd_analyze_verify_is_clean(unit_copy):
    result = subprocess.run([ANALYZE, "verify", str(unit_copy)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # verify prints warnings it does not fail on (unknown keys, bad values); none allowed.
    assert not result.stderr.strip(), result.stderr


@needs_analyze
def test_security_exposure_is_at_most_2(unit_copy):
    command = [ANALYZE, "security", "--offline=yes", "--no-pager", str(unit_copy)]
    result = subprocess.run([*command, "--threshold=20"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    level = re.search(r"Overall exposure level for appliance\.service: (\d+\.\d)", result.stdout)
    assert level, result.stdout
    assert float(level.group(1)) <= 2.0
    # And the threshold really bites: the test could fail.
    stricter = subprocess.run([*command, "--threshold=5"], capture_output=True, text=True,
                              timeout=60)
    assert stricter.returncode != 0


def test_the_unit_says_what_the_issue_asks():
    s = settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"][0].endswith("appliance run --state-dir ${STATE_DIRECTORY}")
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["StartLimitBurst"] and s["StartLimitIntervalSec"]
    assert s["StateDirectory"] == ["appliance"] and s["DynamicUser"] == ["yes"]
    # The watchdog must be well above the daemon's ping (WatchdogSec / 2) and the stop budget
    # above the daemon's own (10 s).
    assert int(s["WatchdogSec"][0]) >= 10
    assert int(s["TimeoutStopSec"][0].rstrip("s")) > 10
    assert "AF_UNIX" in s["RestrictAddressFamilies"][0]  # sd_notify needs it
    for key in ("MemoryMax", "CPUQuota", "ProtectSystem", "ProtectHome", "PrivateTmp",
                "NoNewPrivileges", "SystemCallFilter"):
        assert key in s, key
    assert s["ProtectSystem"] == ["strict"] and "ProcSubset" not in s  # psutil reads /proc
