"""The daemon's life under systemd, with real processes: READY=1 once it serves its models,
watchdog pings from the event loop, a clean SIGTERM while work is in flight, SIGHUP reloads."""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import signal
import socket
import statistics
import time
from urllib.parse import urlsplit

import polars as pl
import pytest

from appliance.core import StateDir, load
from appliance.daemon.lifecycle import Daemon, changed_keys, is_live
from appliance.store import Store
from tests.conftest import FAST_CONFIG, SAMPLES, copy_state, drop, wait_for
from tests.daemon.notify import NotifyListener


@pytest.fixture
def sd(tmp_path, monkeypatch):
    """systemd's end of the notify socket; daemons started in the test inherit it."""
    listener = NotifyListener(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    yield listener
    listener.close()


def rows(n: int) -> list[dict]:
    frame = pl.read_csv(SAMPLES / "machines_02.csv").head(n)
    return frame.drop("failed_within_24h").to_dicts()


def test_ready_only_once_models_serve_then_watchdog_status_and_stopping(
        trained_template, tmp_path, start_daemon, sd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    state = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(state)
    _ready_at, ready = sd.wait_for("READY=1", timeout=30)
    # STATUS= rides on READY=1 and says what is served; the models were loaded before it.
    assert "STATUS=1 pipeline, 1 model served (machines v1)" in ready
    assert daemon.url in ready
    texts = sd.texts()
    assert texts.index("STATUS=loading models") < texts.index(ready)
    r = daemon.get("/ready")
    assert r.status_code == 200 and r.json()["models"] == {"machines": 1}

    sd.wait_for("WATCHDOG=1", count=6, timeout=10)
    pings = [t for t, _ in sd.with_key("WATCHDOG=1")]
    assert 0.05 < statistics.median(b - a for a, b in itertools.pairwise(pings)) < 0.3

    daemon.proc.send_signal(signal.SIGTERM)
    sd.wait_for("STOPPING=1", timeout=5)
    assert daemon.proc.wait(10) == 0
    assert "stopped cleanly" in daemon.log()
    assert not (state / "daemon.json").exists()


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(
        trained_template, tmp_path, start_daemon, sd):
    state = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(state)
    sd.wait_for("READY=1")
    url = urlsplit(daemon.url)
    batch = rows(50)
    body = json.dumps({"rows": batch}).encode()
    conn = socket.create_connection((url.hostname, url.port), timeout=10)
    conn.sendall(
        b"POST /v1/pipelines/machines/predict HTTP/1.1\r\nHost: " + url.netloc.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body[:20]
    )
    time.sleep(0.3)  # the server has the headers: the request is in flight

    signalled = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    sd.wait_for("STOPPING=1", timeout=5)

    def refused() -> bool:
        try:
            socket.create_connection((url.hostname, url.port), timeout=1).close()
        except OSError:
            return True
        return False

    wait_for(refused, timeout=5, what="new connections to be refused")
    assert daemon.proc.poll() is None  # still finishing the request in flight
    conn.sendall(body[20:])
    response = http.client.HTTPResponse(conn)
    response.begin()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 200, answer
    assert answer["model_version"] == 1 and len(answer["predictions"]) == len(batch)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - signalled < 10


SLOW_TRAINING = FAST_CONFIG + """
[train]
threads = 1
learning_rate = 0.0001
num_boost_round = 10000000
early_stopping_rounds = 10000000
"""


def test_sigterm_stops_a_running_training_and_exits_0_in_time(state_root, start_daemon, sd):
    (state_root / "appliance.toml").write_text(SLOW_TRAINING)
    daemon = start_daemon(state_root)
    drop(state_root, "machines", SAMPLES / "machines_01.csv")

    def training() -> bool:
        history = daemon.get("/v1/pipelines/machines/jobs")
        return history.status_code == 200 and any(
            j["status"] == "running" for j in history.json()["history"])

    wait_for(training, timeout=30, what="the training job to start")
    time.sleep(1.0)  # well inside LightGBM's boosting rounds
    assert daemon.get("/health").status_code == 200  # serving goes on while it trains

    signalled = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - signalled < 10
    log = daemon.log()
    assert "training_cancelled" in log and "stopped cleanly" in log

    store = Store.open(state_root / "appliance.db")
    try:
        jobs = store.jobs("machines")
        assert [(j.status, j.trigger) for j in jobs] == [("cancelled", "new_data")]
        assert "shutting down" in (jobs[0].error or "")
        assert store.models("machines") == []  # nothing half-trained was registered
        assert store.integrity_ok()
    finally:
        store.close()
    models_dir = state_root / "models" / "machines"
    assert not models_dir.exists() or not list(models_dir.iterdir())
    assert (state_root / "archive/machines/machines_01.csv").exists()


def test_sighup_reloads_what_can_change_and_keeps_a_broken_config_out(
        trained_template, tmp_path, start_daemon, sd):
    state = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(state)
    sd.wait_for("READY=1")
    assert daemon.get("/v1/pipelines/sensors").status_code == 404
    assert daemon.post("/v1/pipelines/machines/predict",
                       json={"rows": rows(6)}).status_code == 200
    config = state / "appliance.toml"
    config.write_text(FAST_CONFIG + """
[log]
level = "debug"

[server]
host = "0.0.0.0"
max_batch_rows = 5

[pipelines.sensors]
target = "y"
""")
    daemon.proc.send_signal(signal.SIGHUP)
    sd.wait_for("RELOADING=1", timeout=5)
    sd.wait_for("READY=1", count=2, timeout=5)
    assert daemon.get("/v1/pipelines/sensors").json()["target"] == "y"  # applied live
    too_many = daemon.post("/v1/pipelines/machines/predict", json={"rows": rows(6)})
    assert too_many.status_code == 413  # the limit is read per request
    events = daemon.get("/v1/events").json()["events"]
    reloaded = next(e for e in events if e["kind"] == "config_reloaded")
    assert reloaded["details"]["needs_restart"] == ["server.host"]
    assert "log.level" in reloaded["details"]["applied"]
    assert "pipelines.sensors.target" in reloaded["details"]["applied"]
    assert "server.host changed but take(s) effect only after a restart" in reloaded["message"]

    config.write_text("[ingest]\nsettle_seconds = 'soon'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    sd.wait_for("READY=1", count=3, timeout=5)
    failed = next(e for e in daemon.get("/v1/events").json()["events"]
                  if e["kind"] == "config_reload_failed")
    assert "ingest.settle_seconds" in failed["message"]
    assert "running config is kept" in failed["message"]
    assert daemon.get("/v1/pipelines/sensors").status_code == 200  # the old config stays
    assert daemon.get("/health").status_code == 200
    assert daemon.stop() == 0
    assert "config_reload_failed" in daemon.log()


def test_a_reload_never_reads_a_file_named_in_a_derived_expression(state_root, tmp_path,
                                                                   start_daemon):
    """A SIGHUP reload parses the config on the event loop; an expression with a subquery
    reading a FIFO would hang it there. It is refused from its text, naming the key."""
    import os

    import httpx

    (state_root / "appliance.toml").write_text(FAST_CONFIG)
    daemon = start_daemon(state_root)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    (state_root / "appliance.toml").write_text(
        FAST_CONFIG + f"[pipelines.machines.derived]\nx = \"(SELECT a FROM "
        f"read_csv('{fifo}'))\"\n")
    daemon.proc.send_signal(signal.SIGHUP)

    def reload_failed():
        try:
            events = daemon.http.get("/v1/events", timeout=3).json()["events"]
        except httpx.TimeoutException:
            raise AssertionError("the daemon stopped answering after the reload") from None
        return next((e for e in events if e["kind"] == "config_reload_failed"), None)

    try:
        failed = wait_for(reload_failed, timeout=10, what="the reload to be refused")
    finally:
        try:  # release a reader stuck on the FIFO (the daemon is killed after the test)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert "pipelines.machines.derived.x" in failed["message"]
    assert "not a plain expression" in failed["message"]
    assert daemon.get("/health").status_code == 200


def test_reload_applies_in_place_so_every_part_sees_it(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    (root / "appliance.toml").write_text("[ingest]\nsettle_seconds = 2.0\n")
    state = StateDir(root)
    daemon = Daemon(load(root), state)
    watched = daemon.watcher.settings  # the inbox watcher holds the [ingest] section itself
    seen: list[list[str]] = []
    daemon.on_reload.append(seen.append)
    level = logging.getLogger().level
    try:
        (root / "appliance.toml").write_text(
            "[ingest]\nsettle_seconds = 0.5\n[log]\nlevel = 'debug'\n[server]\nport = 9\n")
        assert daemon.reload()
        assert watched.settle_seconds == 0.5 and daemon.watcher.settings is watched
        assert logging.getLogger().level == logging.DEBUG
        assert daemon.settings.server.port == 8080  # needs a restart: not pretended applied
        assert seen == [["ingest.settle_seconds", "log.level"]]
    finally:
        logging.getLogger().setLevel(level)
        daemon.services.store.close()


def test_which_keys_are_live():
    a = load_from("")
    b = load_from("[server]\nport = 1\n[pipelines.x]\ntarget = 'y'\n[train]\nseed = 1\n")
    changed = changed_keys(a, b)
    # A new pipeline changes every one of its keys; outside it, exactly the two set.
    assert {"pipelines.x.target", "pipelines.x.retrain.cron", "pipelines.x.timestamp"} \
        <= set(changed)
    assert [k for k in changed if not k.startswith("pipelines.x.")] == ["server.port",
                                                                         "train.seed"]
    assert changed == sorted(changed)
    assert [k for k in changed_keys(a, b) if not is_live(k)] == ["server.port"]


def load_from(text: str):
    import tomllib

    from appliance.core import parse

    return parse(tomllib.loads(text))


# A daemon whose ingestion of one file takes 60 s and can't be interrupted (as a huge file
# in Polars would): the stop must not wait for it.
STUCK_INGEST = """
import sys, time
from appliance.ingest import ingester as ingest
original = ingest.Ingester.process
def slow(self, claimed, pipeline):
    if "stuck" in claimed.name:
        time.sleep(60)
    return original(self, claimed, pipeline)
ingest.Ingester.process = slow
from appliance.cli.commands import main
sys.argv = ["appliance", "run", "--state-dir", sys.argv[1], "--port", "0"]
main()
"""


def test_a_job_that_cannot_stop_is_left_for_the_next_start(machines_state, start_daemon,
                                                            tmp_path):
    import subprocess
    import sys

    log = open(tmp_path / "stuck.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", STUCK_INGEST, str(machines_state)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for((machines_state / "daemon.json").exists, timeout=30, what="the start")
        drop(machines_state, "machines", SAMPLES / "machines_01.csv", name="stuck.csv")
        processing = machines_state / "processing" / "machines"
        wait_for(lambda: processing.exists() and list(processing.iterdir()), timeout=10,
                 what="the file to be claimed")
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(12) == 0
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert 7 < took < 10
    text = (tmp_path / "stuck.log").read_text()
    assert "was left to be redone at the next start" in text

    # The next start (a normal daemon) ingests the claimed file: nothing was lost.
    daemon = start_daemon(machines_state)
    archived = machines_state / "archive/machines/stuck.csv"
    wait_for(archived.exists, timeout=30, what="the file to be ingested after the restart")
    ingestions = daemon.get("/v1/pipelines/machines/ingestions").json()["ingestions"]
    assert [(i["file_name"], i["status"]) for i in ingestions] == [("stuck.csv", "accepted")]
