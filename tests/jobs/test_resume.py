"""Training that a stop, a crash or a power cut cut short is run again at the next start:
pending triggers and retries are kept in SQLite, and a pipeline with data that no model
has seen trains at start."""

from __future__ import annotations

import signal
import time

import polars as pl
import pytest

from appliance.core import StateDir, parse
from appliance.ingest import Ingester
from appliance.jobs import Trainer
from appliance.models import LiveModels, Registry
from appliance.store import Events, Store
from tests.conftest import SAMPLES, binary_csv, drop, wait_for


def history(daemon, pipeline):
    resp = daemon.get(f"/v1/pipelines/{pipeline}/jobs")
    return resp.json()["history"][::-1] if resp.status_code == 200 else []


SLOW = ("[ingest]\nsettle_seconds = 0.2\n[train]\nearly_stopping_rounds = 1000\n"
        "num_boost_round = 5000\nlearning_rate = 0.01\nthreads = 1\n")
QUICK = "[ingest]\nsettle_seconds = 0.2\n[train]\nnum_boost_round = 20\nthreads = 1\n"


@pytest.mark.timeout(180)
def test_a_training_cut_short_by_a_stop_runs_again_after_the_restart(state_root, start_daemon,
                                                                    tmp_path):
    (state_root / "appliance.toml").write_text(SLOW)
    data = binary_csv(tmp_path / "big.csv", 20_000, 6, seed=0)
    daemon = start_daemon(state_root)
    drop(state_root, "big", data)
    wait_for(lambda: daemon.get("/v1/pipelines/big").status_code == 200
             and daemon.get("/v1/pipelines/big").json()["status"] == "training",
             timeout=60, what="training to start")
    assert daemon.stop(signal.SIGTERM) == 0
    # The next start trains quickly: the run is the same (new data), the config is not.
    (state_root / "appliance.toml").write_text(QUICK)
    again = start_daemon(state_root)
    again.wait_ready_model("big", 1, timeout=90)
    jobs = again.wait_jobs_closed("big", 2, timeout=30)
    assert [(j["trigger"], j["status"]) for j in jobs] == [
        ("new_data", "cancelled"), ("new_data", "succeeded")], jobs
    kinds = [e["kind"] for e in again.get("/v1/events?pipeline=big").json()["events"]]
    assert "training_resumed" in kinds


@pytest.mark.timeout(180)
def test_new_data_whose_trigger_was_lost_trains_at_the_next_start(machines_state,
                                                                  start_daemon, monkeypatch):
    # A crash right after the file reached archive/ (its record is in SQLite) and before
    # training was asked for: the trigger was only ever in memory.
    monkeypatch.setenv("APPLIANCE_TEST_CRASH_AT", "moved")
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    wait_for(lambda: daemon.proc.poll() is not None, timeout=30, what="the crash")
    daemon.stop()
    assert (machines_state / "archive/machines/machines_01.csv").exists()
    monkeypatch.delenv("APPLIANCE_TEST_CRASH_AT")
    again = start_daemon(machines_state)
    again.wait_ready_model("machines", 1, timeout=90)
    assert [j["trigger"] for j in history(again, "machines")] == ["new_data"]
    # A model has seen the newest data now: the next start trains nothing.
    assert again.stop() == 0
    third = start_daemon(machines_state)
    third.wait_ready_model("machines", 1)
    time.sleep(1.0)
    assert len(history(third, "machines")) == 1


# --- retries across a restart, in process -------------------------------------------------


def _setup(tmp_path, rows: int):
    state = StateDir(tmp_path / "s")
    state.create()
    settings = parse({"jobs": {"retry_attempts": 2, "retry_backoff_seconds": 60.0}})
    store = Store.open(state.db)
    events = Events(store)
    ingester = Ingester(state, store, events, settings)
    claimed = state.pipeline_dir(state.processing, "tiny") / f"{time.time_ns()}__tiny.csv"
    claimed.write_bytes(pl.DataFrame({"x": [float(i) for i in range(rows)],
                                      "target": [i % 2 for i in range(rows)]})
                        .write_csv().encode())
    ingester.process(claimed, "tiny")
    return state, store, events, settings


def _trainer(state, store, events, settings):
    trainer = Trainer(state, store, Registry(state, store), events, settings, LiveModels())
    retries: list[tuple[str, float]] = []
    trainer.schedule_retry = lambda pipeline, delay: retries.append((pipeline, delay))
    return trainer, retries


def test_a_pending_retry_survives_a_restart_and_giving_up_is_remembered(tmp_path):
    state, store, events, settings = _setup(tmp_path, rows=5)  # too few rows: fails
    first, retries = _trainer(state, store, events, settings)
    first.request("tiny", "new_data")
    wait_for(lambda: retries, timeout=30, what="a retry to be scheduled")
    assert retries == [("tiny", 60.0)]
    first.shutdown()

    # A restart: the retry is scheduled again for what is left of its wait, as attempt 1.
    second, retries = _trainer(state, store, events, settings)
    second.resume()
    assert len(retries) == 1 and retries[0][0] == "tiny" and 50 < retries[0][1] <= 60
    assert not second.busy("tiny")
    second.retry_due("tiny")           # the retry comes due: attempt 2 fails, one more
    wait_for(lambda: len(retries) == 2, timeout=30, what="the second retry")
    assert retries[1] == ("tiny", 120.0)
    second.retry_due("tiny")           # the last attempt fails: it gives up
    wait_for(lambda: not second.busy("tiny") and len(store.jobs("tiny")) == 3, timeout=30)
    assert len(retries) == 2
    second.shutdown()
    assert [j.trigger for j in store.jobs("tiny")[::-1]] == ["new_data", "retry", "retry"]

    # Given up on this data: a restart does not train it again...
    third, retries = _trainer(state, store, events, settings)
    third.resume()
    assert not third.busy("tiny") and retries == []
    third.retry_due("tiny")            # (a stale retry timer does nothing)
    assert not third.busy("tiny")
    assert len(store.jobs("tiny")) == 3
    # ... new data does.
    ingester = Ingester(state, store, events, settings, on_accepted=third.on_ingested)
    claimed = state.pipeline_dir(state.processing, "tiny") / f"{time.time_ns()}__more.csv"
    claimed.write_bytes(b"x,target\n10.0,1\n11.0,0\n")
    ingester.process(claimed, "tiny")
    wait_for(lambda: len(store.jobs("tiny")) == 4 and not third.busy("tiny"), timeout=30,
             what="a run on the new data")
    assert store.jobs("tiny")[0].trigger == "new_data"
    third.shutdown()


@pytest.mark.timeout(180)
def test_a_training_that_kills_the_daemon_is_retried_with_backoff_then_given_up(
        state_root, start_daemon, tmp_path):
    """The process dies in the middle of a training (the kernel's out-of-memory killer does
    this to a run too big for the box): each such death counts as a failed attempt, so the
    box does not train itself into a crash loop."""
    (state_root / "appliance.toml").write_text(
        SLOW + "[jobs]\nretry_attempts = 1\nretry_backoff_seconds = 0.2\n")
    data = binary_csv(tmp_path / "big.csv", 20_000, 6, seed=1)

    def training(d) -> bool:
        r = d.get("/v1/pipelines/big")
        return r.status_code == 200 and r.json()["status"] == "training"

    def events(d) -> list[dict]:
        return d.get("/v1/events?pipeline=big").json()["events"]

    first = start_daemon(state_root)
    drop(state_root, "big", data)
    wait_for(lambda: training(first), timeout=60, what="training to start")
    first.stop(signal.SIGKILL)
    second = start_daemon(state_root)          # attempt 1 died: retried after the backoff
    died = next(e for e in events(second) if e.get("details", {}).get("code") ==
                "interrupted")
    assert died["kind"] == "training_failed" and "retry 1 of 1" in died["message"]
    wait_for(lambda: training(second), timeout=60, what="the retry to start")
    second.stop(signal.SIGKILL)
    third = start_daemon(state_root)           # attempt 2 died too: given up
    assert any("given up on this data" in e["message"] for e in events(third))
    time.sleep(1.5)
    assert not training(third)
    assert [(j["trigger"], j["status"]) for j in history(third, "big")] == [
        ("new_data", "failed"), ("retry", "failed")]
