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
    jobs = daemon.wait_jobs_closed("machines", 1, timeout=30)
    assert [(j["trigger"], j["status"], j["model_version"]) for j in jobs] == [
        ("new_data", "succeeded", 1)
    ]
    assert daemon.get("/v1/pipelines/nope/jobs").status_code == 404


# Headers an operator's CSV may well have, each of which broke a stage after ingestion
# accepted the file: LightGBM refuses `[]{}":,` in feature names, Polars' value_counts a
# column named `count`, and a date column `t` expands to a part named like column `t.month`.
HOSTILE_NAMES = {"temperature_c": "Temperature [C]", "vibration_mm_s": "vibration {mm/s}",
                 "pressure_bar": 'pressure "bar"', "rpm": "rpm, max", "machine_type": "count",
                 "site": "site: name", "humidity_pct": "t.month"}


def hostile_csv(source: str, dest) -> pl.DataFrame:
    """The sample renamed, with a date column `t`; returned as Polars reads it back (it
    keeps a quoted header's doubled quotes: `pressure ""bar""`)."""
    frame = pl.read_csv(SAMPLES / source, try_parse_dates=True).rename(HOSTILE_NAMES)
    frame = frame.with_columns(pl.col("timestamp").dt.date().alias("t"))
    frame.write_csv(dest)
    return pl.read_csv(dest, try_parse_dates=True)


def test_hostile_headers_train_serve_and_drift_by_their_raw_names(state_root, start_daemon,
                                                                  tmp_path):
    (state_root / "appliance.toml").write_text(
        '[ingest]\nsettle_seconds = 0.2\n[server]\nlog_sample_rate = 1.0\n'
        '[drift]\ninterval_seconds = 1\nmin_rows = 50\n'
        '[pipelines.plant]\ntarget = "failed_within_24h"\ntimestamp = "timestamp"\n'
        'id = "reading_id"\n')
    first = hostile_csv("machines_01.csv", tmp_path / "plant_01.csv")
    second = hostile_csv("machines_02.csv", tmp_path / "plant_02.csv")
    daemon = start_daemon(state_root)
    drop(state_root, "plant", tmp_path / "plant_01.csv")

    def finished_job():
        jobs = daemon.get("/v1/pipelines/plant/jobs").json()["history"]
        return next((j for j in jobs if j["status"] != "running"), None)

    job = wait_for(finished_job, timeout=90, what="the first training")
    assert job["status"] == "succeeded", job["error"]
    daemon.wait_ready_model("plant", 1)
    detail = daemon.get("/v1/pipelines/plant").json()
    assert list(detail["schema"]) == first.columns
    assert '"' in first.columns[7] and "Temperature [C]" in first.columns

    # model.json keeps the raw names; LightGBM's own names are in model.txt.
    meta = json.loads((state_root / "models/plant/1/model.json").read_text())
    raw = [f["name"] for f in meta["spec"]["features"]]
    assert raw == [c for c in first.columns
                   if c not in ("reading_id", "timestamp", "failed_within_24h")]
    assert {"Temperature [C]", "t.month", "t.month (date part)"} <= set(
        meta["feature_importance"])
    assert meta["feature_importance"]["Temperature [C]"] > 0
    model_txt = (state_root / "models/plant/1/model.txt").read_text()
    names_line = next(line for line in model_txt.splitlines()
                      if line.startswith("feature_names="))
    assert names_line.split("=", 1)[1].split() == meta["lightgbm_feature_names"]

    # Predictions by the raw names: a batch, and one row alone with the same answer.
    rows = second.head(200).drop("failed_within_24h").with_columns(
        pl.col("timestamp", "t").cast(pl.String)).to_dicts()
    resp = daemon.post("/v1/pipelines/plant/predict", json={"rows": rows})
    assert resp.status_code == 200, resp.text
    batch = resp.json()["predictions"]
    one = daemon.post("/v1/pipelines/plant/predict", json={"rows": rows[:1]})
    assert one.status_code == 200, one.text
    assert abs(one.json()["predictions"][0] - batch[0]) < 1e-12
    missing = daemon.post("/v1/pipelines/plant/predict",
                          json={"rows": [{k: v for k, v in rows[0].items()
                                          if k != "Temperature [C]"}]})
    assert missing.status_code == 422 and "Temperature [C]" in missing.text

    # Drift of the sampled request inputs, and of a new data set, by the raw names.
    def drift_from(source: str):
        body = daemon.get("/v1/pipelines/plant/drift").json()
        latest = body["latest"]
        return latest if latest and latest["source"] == source else None

    report = wait_for(lambda: drift_from("predictions"), timeout=30,
                      what="the drift check of the request inputs")
    assert {"Temperature [C]", "count", "t.month", "rpm, max"} <= {
        f["feature"] for f in report["features"]}
    drop(state_root, "plant", tmp_path / "plant_02.csv")
    report = wait_for(lambda: drift_from("ingestion"), timeout=60,
                      what="the drift check of the second file")
    assert report["rows"] == second.height
    by_name = {f["feature"]: f for f in report["features"]}
    assert by_name["count"]["kind"] == "categorical" and by_name["count"]["psi"] is not None
    assert by_name["Temperature [C]"]["psi"] is not None
    events = daemon.get("/v1/events?pipeline=plant").json()["events"]
    assert not [e for e in events if e["level"] == "error"], events
    assert first.height == 3000
