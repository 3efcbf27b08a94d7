"""Config: defaults, the file, flags, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance.core import ConfigError, load, resolve_state_dir


def test_every_setting_has_a_default(tmp_path):
    settings = load(tmp_path)
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8080
    assert settings.pipeline("anything").target == "target"


def test_file_then_flags(tmp_path):
    (tmp_path / "appliance.toml").write_text(
        '[server]\nport = 9000\n[pipelines.churn]\ntarget = "churned"\ntask = "binary"\n'
    )
    assert load(tmp_path).server.port == 9000
    settings = load(tmp_path, overrides={"server.port": 9100, "server.host": None})
    assert settings.server.port == 9100 and settings.server.host == "127.0.0.1"
    assert settings.pipeline("churn").target == "churned"


def test_explicit_config_path(tmp_path):
    other = tmp_path / "elsewhere.toml"
    other.write_text("[log]\nlevel = 'debug'\n")
    assert load(tmp_path / "state", other).log.level == "debug"
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path, tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ("[server]\nport = 'eighty'\n", "server.port", "Expected `int`"),
        ("[server]\nprot = 80\n", "server.prot", "unknown setting"),
        ("[sever]\nport = 80\n", "sever", "unknown setting"),
        ("[pipelines.churn]\ntask = 'binar'\n", "pipelines.churn.task", "binar"),
        ("[pipelines.churn]\ntargett = 'x'\n", "pipelines.churn.targett", "unknown"),
        ("[pipelines.churn.retrain]\nmin_new_rows = 0\n",
         "pipelines.churn.retrain.min_new_rows", ">= 1"),
        ("[server\nport = 1\n", None, "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, toml, key, words):
    (tmp_path / "appliance.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert info.value.key == key
    assert words in str(info.value)
    assert str(tmp_path / "appliance.toml") in str(info.value)


def test_state_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("APPLIANCE_STATE_DIR", str(tmp_path / "env"))
    assert resolve_state_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_state_dir(None) == tmp_path / "env"
    monkeypatch.delenv("APPLIANCE_STATE_DIR")
    assert resolve_state_dir(None).name == "appliance-state"


def test_bad_config_stops_the_start_with_a_message_not_a_traceback(tmp_path):
    (tmp_path / "appliance.toml").write_text("[server]\nport = 'x'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "server.port" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "appliance.db").exists()


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "run", "--state-dir", str(tmp_path),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 1
    assert f"port {port}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
