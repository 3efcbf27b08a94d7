"""Automatic retraining: triggers, coalescing, retries, the schedule, and clean shutdown."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import polars as pl
import pytest

from appliance.core import StateDir, parse
from appliance.ingest import Ingester
from appliance.jobs import Trainer
from appliance.models import LiveModels, Registry
from appliance.store import Events, Store
from tests.conftest import FAST_CONFIG, SAMPLES, drop, wait_for


def history(daemon, pipeline="machines"):
    resp = daemon.get(f"/v1/pipelines/{pipeline}/jobs")
    return resp.json()["history"][::-1] if resp.status_code == 200 else []


def test_requests_during_a_run_coalesce_into_one_follow_up(tmp_path):
    state = StateDir(tmp_path / "s")
    state.create()
    store = Store.open(state.db)
    events = Events(store)
    settings = parse({"pipelines": {"machines": {"target": "failed_within_24h",
                                                 "timestamp": "timestamp"}}})
    trainer = Trainer(state, store, Registry(state, store), events, settings, LiveModels())
    ingester = Ingester(state, store, events, settings)
    claimed = state.pipeline_dir(state.processing, "machines") / "1__machines_01.csv"
    claimed.write_bytes((SAMPLES / "machines_01.csv").read_bytes())
    ingester.process(claimed, "machines")

    release = threading.Event()
    real = trainer.train_and_gate
    calls = []

    def gated(pipeline, trigger, **kwargs):
        calls.append(trigger)
        release.wait(30)
        return real(pipeline, trigger, **kwargs)

    trainer.train_and_gate = gated  # hold the first run open while triggers pile up
    assert trainer.request("machines", "manual") is True
    wait_for(lambda: calls, timeout=10, what="the first run to start")
    folded = [trainer.request("machines", t) for t in ["new_data", "drift", "manual"] * 4]
    assert folded == [False] * 12
    release.set()
    wait_for(lambda: not trainer.busy("machines"), timeout=60, what="the runs to finish")
    jobs = store.jobs("machines")[::-1]
    assert [j.trigger for j in jobs] == ["manual", "manual"]  # one follow-up, the last trigger
    assert calls == ["manual", "manual"]
    assert all(j.status == "succeeded" for j in jobs)
    trainer.shutdown()


def test_min_new_rows_decides_when_new_data_retrains(machines_state, start_daemon):
    config = FAST_CONFIG + "[pipelines.machines.retrain]\nmin_new_rows = 2000\n"
    (machines_state / "appliance.toml").write_text(config)
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")  # 3000 rows: trains
    daemon.wait_ready_model("machines", 1)
    drop(machines_state, "machines", SAMPLES / "machines_02.csv")  # 1500: not enough yet
    wait_for(lambda: daemon.get("/v1/pipelines/machines").json()["datasets"] == 2,
             timeout=30, what="the second data set")
    time.sleep(1.0)
    assert len(history(daemon)) == 1
    drop(machines_state, "machines", SAMPLES / "machines_03_drifted.csv")  # 3000 since v1
    wait_for(lambda: len(history(daemon)) == 2 and history(daemon)[1]["status"] != "running",
             timeout=60, what="the retraining")
    assert [j["trigger"] for j in history(daemon)] == ["new_data", "new_data"]


def test_failed_training_is_recorded_and_retried_with_backoff(state_root, start_daemon,
                                                               tmp_path):
    (state_root / "appliance.toml").write_text(
        "[ingest]\nsettle_seconds = 0.2\n[jobs]\nretry_attempts = 2\n"
        "retry_backoff_seconds = 0.3\n"
    )
    tiny = tmp_path / "tiny.csv"
    pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "target": [0, 1, 0, 1, 0]}).write_csv(tiny)
    daemon = start_daemon(state_root)
    drop(state_root, "tiny", tiny)
    wait_for(lambda: len(history(daemon, "tiny")) == 3
             and history(daemon, "tiny")[2]["status"] == "failed",
             timeout=30, what="two retries")
    jobs = history(daemon, "tiny")
    assert [j["trigger"] for j in jobs] == ["new_data", "retry", "retry"]
    assert all(j["status"] == "failed" and "at least 20" in j["error"] for j in jobs)
    time.sleep(1.5)  # and then it gives up: no fourth run
    assert len(history(daemon, "tiny")) == 3
    kinds = [e["kind"] for e in daemon.get("/v1/events?pipeline=tiny").json()["events"]]
    assert kinds.count("training_retry_scheduled") == 2
    assert daemon.get("/health").status_code == 200  # a failing job never stops the daemon


def test_cron_schedule_retrains_and_is_listed_with_its_next_run(machines_state,
                                                                 start_daemon):
    config = FAST_CONFIG + '[pipelines.machines.retrain]\ncron = "*/2 * * * * *"\n'
    (machines_state / "appliance.toml").write_text(config)
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    wait_for(lambda: any(j["trigger"] == "schedule" for j in history(daemon)), timeout=30,
             what="a scheduled retraining")
    scheduled = daemon.get("/v1/pipelines/machines/jobs").json()["scheduled"]
    cron = [s for s in scheduled if s["id"] == "retrain:machines"]
    assert cron and cron[0]["schedule"] == "cron */2 * * * * *" and cron[0]["next_run"]


def test_manual_trigger_needs_the_token(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    wait_for(lambda: daemon.get("/v1/pipelines/machines").json()["status"] != "training",
             timeout=30)
    assert daemon.post("/v1/pipelines/machines/retrain").status_code == 401
    resp = daemon.post("/v1/pipelines/machines/retrain", admin=True)
    assert resp.status_code == 202
    wait_for(lambda: [j["trigger"] for j in history(daemon)] == ["new_data", "manual"]
             and history(daemon)[1]["status"] == "succeeded", timeout=60)


@pytest.mark.timeout(120)
def test_stopping_during_training_cancels_cleanly(state_root, start_daemon, tmp_path):
    (state_root / "appliance.toml").write_text(
        "[ingest]\nsettle_seconds = 0.2\n[train]\nearly_stopping_rounds = 1000\n"
        "num_boost_round = 5000\nlearning_rate = 0.01\nthreads = 1\n"
    )
    rng = np.random.default_rng(0)
    n = 200_000
    x = rng.normal(size=(n, 8))
    frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(8)}).with_columns(
        target=pl.Series((x[:, 0] + rng.normal(size=n) > 0).astype(np.int64))
    )
    big = tmp_path / "big.csv"
    frame.write_csv(big)
    daemon = start_daemon(state_root)
    drop(state_root, "big", big)
    wait_for(lambda: daemon.get("/v1/pipelines/big").status_code == 200
             and daemon.get("/v1/pipelines/big").json()["status"] == "training",
             timeout=60, what="training to start")
    time.sleep(1.0)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    again = start_daemon(state_root)
    jobs = history(again, "big")
    assert jobs[0]["status"] == "cancelled"
    assert again.get("/v1/pipelines/big/models").json()["models"] == []
    models_dir = state_root / "models" / "big"
    assert not list(models_dir.iterdir()) if models_dir.exists() else True


def test_reload_rebuilds_the_schedule(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    scheduled = daemon.get("/v1/pipelines/machines/jobs").json()["scheduled"]
    assert "retrain:machines" not in [j["id"] for j in scheduled]
    # The box-wide periodic jobs run on the same scheduler and show with their next run.
    assert {"monitor:flush", "monitor:drift", "monitor:retention"} <= {j["id"] for j in scheduled}
    (machines_state / "appliance.toml").write_text(
        FAST_CONFIG + '[pipelines.machines.retrain]\ncron = "*/2 * * * * *"\n'
    )
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(j["trigger"] == "schedule" for j in history(daemon)), timeout=30,
             what="a scheduled retraining after the reload")


def test_drifted_labelled_batch_retrains_and_promotes_with_no_manual_step(machines_state,
                                                                         start_daemon):
    (machines_state / "appliance.toml").write_text(
        FAST_CONFIG + "[pipelines.machines.retrain]\non_drift = true\nmin_new_rows = 100000\n"
    )
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    drop(machines_state, "machines", SAMPLES / "machines_03_drifted.csv")
    daemon.wait_ready_model("machines", 2, timeout=120)
    # v2 serves a moment before its job is recorded as finished.
    def finished() -> list[dict] | None:
        jobs = history(daemon)
        return jobs if jobs and all(j["status"] != "running" for j in jobs) else None

    jobs = wait_for(finished, timeout=20, what="the jobs to finish")
    assert [(j["trigger"], j["status"], j["model_version"]) for j in jobs] == [
        ("new_data", "succeeded", 1), ("drift", "succeeded", 2)]
    rows = pl.read_csv(SAMPLES / "machines_03_drifted.csv").tail(5).drop(
        "failed_within_24h").to_dicts()
    assert daemon.post("/v1/pipelines/machines/predict",
                       json={"rows": rows}).json()["model_version"] == 2
    v2 = daemon.get("/v1/pipelines/machines/models").json()["models"][0]
    assert v2["version"] == 2 and v2["stage"] == "production"
    assert "vs production v1" in v2["decision"] or "v1" in v2["decision"]

    story = [e["kind"] for e in daemon.get("/v1/events?pipeline=machines").json()["events"]][::-1]
    wanted = ["ingested", "trained", "promoted", "ingested", "drift_detected",
              "training_started", "trained", "promoted"]
    it = iter(story)
    assert all(kind in it for kind in wanted), story  # in this order
