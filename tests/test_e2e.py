"""The thin path, end to end with the real daemon: a CSV dropped in the inbox becomes a
served LightGBM model whose predictions are useful on rows it never saw."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from appliance.models.metrics import auc
from tests.conftest import SAMPLES, drop, wait_for


def test_dropped_csv_becomes_a_useful_served_model(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    assert daemon.get("/health").json()["status"] == "ok"
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)

    # The data set version and the model are where DESIGN.md says.
    assert (machines_state / "archive/machines/machines_01.csv").exists()
    assert list((machines_state / "datasets/machines").glob("*.parquet"))
    model_dir = machines_state / "models/machines/1"
    assert (model_dir / "model.txt").read_text().startswith("tree")
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["task"] == "binary" and meta["spec"]["target"] == "failed_within_24h"

    # Rows the model never saw: the second batch, sent as JSON rows with string categories.
    unseen = pl.read_csv(SAMPLES / "machines_02.csv").head(1000)
    y = unseen["failed_within_24h"].to_numpy()
    rows = unseen.drop("failed_within_24h").to_dicts()
    resp = daemon.post("/v1/pipelines/machines/predict", json={"rows": rows})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == 1
    assert len(body["predictions"]) == len(rows) == len(set(body["prediction_ids"]))
    p = np.array(body["predictions"])
    assert ((p >= 0) & (p <= 1)).all()
    assert auc(y, p) > 0.8

    # One row at a time gives the same answer as in the batch.
    one = daemon.post("/v1/pipelines/machines/predict", json={"rows": rows[:1]}).json()
    assert abs(one["predictions"][0] - p[0]) < 1e-12


def test_file_without_target_is_rejected_with_a_reason(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_broken.csv")
    reason_path = machines_state / "rejected/machines/machines_broken.csv.reason.json"
    wait_for(reason_path.exists, timeout=30, what="the reason file")
    reason = json.loads(reason_path.read_text())
    assert reason["code"] == "missing_target"
    assert "failed_within_24h" in reason["message"]
    assert "[pipelines.machines] target" in reason["message"]
    assert (machines_state / "rejected/machines/machines_broken.csv").exists()
    assert not list((machines_state / "inbox/machines").iterdir())
    ingestions = daemon.get("/v1/pipelines/machines/ingestions").json()["ingestions"]
    assert [(i["status"], i["code"]) for i in ingestions] == [("rejected", "missing_target")]
    # No model, so predict says to retry later.
    resp = daemon.post("/v1/pipelines/machines/predict", json={"rows": [{}]})
    assert resp.status_code == 503 and resp.headers["retry-after"]


def test_default_target_column_without_config(state_root, start_daemon, tmp_path):
    (state_root / "appliance.toml").write_text("[ingest]\nsettle_seconds = 0.2\n")
    src = pl.read_csv(SAMPLES / "machines_01.csv").rename({"failed_within_24h": "target"})
    path = tmp_path / "plain.csv"
    src.write_csv(path)
    daemon = start_daemon(state_root)
    drop(state_root, "plain", path)
    daemon.wait_ready_model("plain", 1)
    detail = daemon.get("/v1/pipelines/plain").json()
    assert detail["target"] == "target" and detail["production"]["version"] == 1


def test_second_start_finds_data_and_model_without_retraining(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    row = pl.read_csv(SAMPLES / "machines_02.csv").head(3).drop("failed_within_24h").to_dicts()
    before = daemon.post("/v1/pipelines/machines/predict", json={"rows": row}).json()
    assert daemon.stop() == 0

    again = start_daemon(machines_state)
    ready = again.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"machines": 1}
    after = again.post("/v1/pipelines/machines/predict", json={"rows": row}).json()
    assert after["predictions"] == before["predictions"]
    events = again.get("/v1/events").json()["events"]
    assert sum(e["kind"] == "training_started" for e in events) == 1
    assert [m["version"] for m in again.get("/v1/pipelines/machines/models").json()["models"]] \
        == [1]
    assert len(list((machines_state / "datasets/machines").glob("*.parquet"))) == 1


def test_job_history_records_trigger_and_version(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    jobs = daemon.get("/v1/pipelines/machines/jobs").json()
    assert [(j["trigger"], j["status"], j["model_version"]) for j in jobs["history"]] == [
        ("new_data", "succeeded", 1)
    ]
    assert daemon.get("/v1/pipelines/nope/jobs").status_code == 404
