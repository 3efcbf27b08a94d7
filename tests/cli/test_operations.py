"""Operating the box: ``appliance doctor`` finds each kind of problem and says how to fix
it; ``appliance backup`` makes a copy a daemon can start from while the original runs;
``sudo appliance ingest`` leaves files the service's own user can take."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.cli.doctor import check_disk, check_network, run_checks
from appliance.core import StateDir, parse
from tests.conftest import SAMPLES, copy_state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doctor(state: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["doctor", "--state-dir", str(state), *args])
    return result.exit_code, result.output


def statuses(output: str) -> dict[str, str]:
    """check -> worst status, from the printed report."""
    rank = {"OK": 0, "WARN": 1, "FAIL": 2}
    out: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in rank \
                and rank[parts[0]] >= rank.get(out.get(parts[1], "OK"), 0):
            out[parts[1]] = parts[0]
    return out


@pytest.fixture
def trained(trained_template, tmp_path) -> Path:
    state = copy_state(trained_template, tmp_path / "state")
    state.chmod(0o700)  # as systemd makes it (StateDirectoryMode=0700)
    return state


def test_a_healthy_box_passes_every_check(trained):
    code, out = doctor(trained, "--port", str(free_port()))
    assert code == 0, out
    assert statuses(out) == {"config": "OK", "state_dir": "OK", "token": "OK", "disk": "OK",
                             "port": "OK", "network": "OK", "database": "OK", "models": "OK"}
    assert "machines v1 (production): files match their hashes and load" in out
    # Read-only: nothing was created beside the database.
    assert not list(trained.glob("appliance.db-*"))


def test_a_broken_config_names_the_key(trained):
    (trained / "appliance.toml").write_text("[server]\nport = 'http'\n")
    code, out = doctor(trained)
    assert code == 1
    assert statuses(out)["config"] == "FAIL"
    assert "`server.port`" in out and "fix: correct the value of `server.port`" in out
    assert "not checked: the config is broken" in out


def test_loose_permissions_on_the_token_and_state_dir(trained):
    (trained / "token").chmod(0o644)
    trained.chmod(0o777)
    try:
        code, out = doctor(trained, "--port", str(free_port()))
    finally:
        trained.chmod(0o700)
    assert code == 1
    assert statuses(out)["token"] == "FAIL" and statuses(out)["state_dir"] == "FAIL"
    assert f"fix: chmod 600 {trained / 'token'}" in out
    assert f"fix: chmod 700 {trained}" in out
    trained.chmod(0o755)
    _, out = doctor(trained, "--port", str(free_port()))
    assert statuses(out)["state_dir"] == "WARN" and "readable by other users" in out


def test_a_port_taken_by_another_program_but_not_by_our_daemon(trained, start_daemon):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        code, out = doctor(trained, "--port", str(taken))
        assert code == 1 and statuses(out)["port"] == "FAIL"
        assert f"ss -ltnp 'sport = :{taken}'" in out

    daemon = start_daemon(trained)
    port = daemon.url.rsplit(":", 1)[1]
    code, out = doctor(trained, "--port", port)
    assert code == 0, out
    assert f"is in use by this appliance (daemon pid {daemon.proc.pid}" in out
    assert statuses(out)["models"] == "OK"  # checked beside the running daemon


def test_a_damaged_model_is_found_before_a_restart_fails(trained):
    model = trained / "models/machines/1/model.txt"
    model.write_text(model.read_text() + "\n")
    code, out = doctor(trained, "--port", str(free_port()))
    assert code == 1 and statuses(out)["models"] == "FAIL"
    assert "machines v1 (production) does not load" in out
    assert "models/machines/1/model.txt" in out
    assert "appliance promote machines N" in out


def test_low_disk_is_a_failure():
    state = StateDir(Path.cwd())
    assert check_disk(state)[0].status in ("ok", "warn")
    low = check_disk(state, fail_below=1 << 62)[0]
    assert low.status == "fail" and "ingestion and training fail" in low.message
    assert low.fix


def test_a_lan_address_needs_the_unit_widened(tmp_path):
    lan = parse({"server": {"host": "0.0.0.0"}})
    dropins = tmp_path / "appliance.service.d"
    finding = check_network(lan, (dropins,))[0]
    assert finding.status == "warn" and "IPAddressAllow=localhost" in finding.message
    assert "systemctl edit appliance" in (finding.fix or "")
    dropins.mkdir()
    (dropins / "lan.conf").write_text("[Service]\nIPAddressAllow=192.168.10.0/24\n")
    assert check_network(lan, (dropins,))[0].status == "ok"
    assert check_network(parse({}), (dropins,))[0].status == "ok"


def test_a_database_from_a_newer_release(trained):
    import sqlite3

    with sqlite3.connect(trained / "appliance.db") as conn:
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                     "VALUES ('appliance', '9999_from_the_future', 'now')")
    conn.close()
    findings = run_checks(trained, overrides={"server.port": 0})
    bad = [f for f in findings if f.check == "database"]
    assert bad[0].status == "fail" and "9999_from_the_future" in bad[0].message


def test_backup_while_running_restores_to_the_same_served_model(trained, tmp_path,
                                                                start_daemon):
    daemon = start_daemon(trained)
    rows = pl.read_csv(SAMPLES / "machines_02.csv").head(5).drop("failed_within_24h")
    before = daemon.post("/v1/pipelines/machines/predict",
                         json={"rows": rows.to_dicts()}).json()
    dest = tmp_path / "backup"
    result = CliRunner().invoke(cli, ["backup", str(dest), "--state-dir", str(trained)])
    assert result.exit_code == 0, result.output
    assert daemon.get("/health").status_code == 200
    assert daemon.stop() == 0

    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    assert (dest / "token").read_text() == (trained / "token").read_text()
    assert oct((dest / "token").stat().st_mode & 0o777) == "0o600"
    assert not (dest / "daemon.json").exists()
    assert (dest / "archive/machines/machines_01.csv").exists()

    restored = start_daemon(dest)
    r = restored.get("/ready")
    assert r.status_code == 200 and r.json()["models"] == {"machines": 1}
    after = restored.post("/v1/pipelines/machines/predict",
                          json={"rows": rows.to_dicts()}).json()
    assert after["predictions"] == before["predictions"]
    assert json.loads((dest / "daemon.json").read_text())["pid"] == restored.proc.pid

    again = CliRunner().invoke(cli, ["backup", str(dest), "--state-dir", str(trained)])
    assert again.exit_code == 1 and "not an empty directory" in again.output
    os.sync()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as `sudo appliance ingest` has")
def test_sudo_ingest_hands_the_file_to_the_service_user(tmp_path):
    state = tmp_path / "state"
    (state / "inbox").mkdir(parents=True)
    os.chown(state / "inbox", 4242, 4242)  # the service's own user, as under DynamicUser
    result = CliRunner().invoke(cli, ["ingest", str(SAMPLES / "machines_01.csv"),
                                      "--pipeline", "machines", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    folder = state / "inbox/machines"
    assert folder.stat().st_uid == 4242  # the daemon can rename files out of it
    assert (folder / "machines_01.csv").stat().st_uid == 4242


# --- `sudo appliance ingest` never follows a link the service user planted (issue 19.1) ----

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root, as `sudo appliance ingest` has")


def _service_owned_inbox(tmp_path: Path) -> tuple[Path, int]:
    """A state dir whose inbox belongs to a second user (nobody), as under DynamicUser;
    everything in the inbox is that user's to change."""
    import pwd

    uid = pwd.getpwnam("nobody").pw_uid
    state = tmp_path / "state"
    (state / "inbox/machines").mkdir(parents=True)
    for folder in (state / "inbox", state / "inbox/machines"):
        os.chown(folder, uid, uid)
    return state, uid


def _root_only(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def _sudo_ingest(state: Path, name: str = "machines_01.csv"):
    return CliRunner().invoke(cli, ["ingest", str(SAMPLES / name), "--pipeline", "machines",
                                    "--state-dir", str(state)])


@needs_root
def test_sudo_ingest_never_writes_or_chowns_through_a_planted_temp_link(tmp_path):
    state, uid = _service_owned_inbox(tmp_path)
    secret = _root_only(tmp_path / "shadow", b"root:secret\n")
    folder = state / "inbox/machines"
    # The temp names a guessing service user would plant: the old fixed one, and others.
    for name in (".machines_01.csv.part", ".machines_01.csv.tmp"):
        (folder / name).symlink_to(secret)
    result = _sudo_ingest(state)
    assert result.exit_code == 0, result.output
    assert secret.read_bytes() == b"root:secret\n"
    st = secret.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)
    dropped = folder / "machines_01.csv"
    assert dropped.read_bytes() == (SAMPLES / "machines_01.csv").read_bytes()
    assert not dropped.is_symlink() and dropped.stat().st_uid == uid
    assert dropped.stat().st_nlink == 1


@needs_root
def test_sudo_ingest_refuses_a_pipeline_folder_that_is_a_link(tmp_path):
    state, _ = _service_owned_inbox(tmp_path)
    rootdir = tmp_path / "root-only"
    rootdir.mkdir(mode=0o700)
    _root_only(rootdir / "keep", b"mine")
    folder = state / "inbox/machines"
    folder.rmdir()
    folder.symlink_to(rootdir)
    result = _sudo_ingest(state)
    assert result.exit_code != 0
    assert "inbox/machines" in result.output and "link" in result.output
    st = rootdir.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o700)
    assert sorted(p.name for p in rootdir.iterdir()) == ["keep"]
    assert (rootdir / "keep").stat().st_uid == 0


@needs_root
def test_sudo_ingest_refuses_an_inbox_that_is_a_link(tmp_path):
    state, _ = _service_owned_inbox(tmp_path)
    rootdir = tmp_path / "root-only"
    (rootdir / "machines").mkdir(parents=True, mode=0o700)
    (state / "inbox").rename(tmp_path / "old-inbox")
    (state / "inbox").symlink_to(rootdir)
    result = _sudo_ingest(state)
    assert result.exit_code != 0 and "link" in result.output
    assert list((rootdir / "machines").iterdir()) == []
    assert (rootdir / "machines").stat().st_uid == 0 and rootdir.stat().st_uid == 0
