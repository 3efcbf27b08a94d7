"""The feature store through the real daemon: feature sets dropped in their own inbox
folder, the online store and its routes, point-in-time joins and derived features in
training, and the same computation at prediction time."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import drop, wait_for

T0 = datetime(2026, 1, 1)

CONFIG = """
[ingest]
settle_seconds = 0.2

[feature_sets.machine_info]
key = "machine_id"
timestamp = "updated_at"

[pipelines.wear]
target = "failed"
timestamp = "ts"
join = ["machine_info"]
missing_key = "{missing_key}"

[pipelines.wear.derived]
load_ratio = "current / rated_current"
temp_f = "temperature * 1.8 + 32"
"""


def machine_info(n_machines: int = 40) -> pl.DataFrame:
    """Each machine's rated current, and a re-rating on day 20 for half of them."""
    rows = []
    for m in range(n_machines):
        rows.append({"machine_id": f"M{m}", "updated_at": T0 - timedelta(days=30),
                     "rated_current": 10.0 + m % 5, "vendor": "acme" if m % 2 else "zenith"})
        if m % 2 == 0:
            rows.append({"machine_id": f"M{m}", "updated_at": T0 + timedelta(days=20),
                         "rated_current": 20.0 + m % 5, "vendor": "zenith"})
    return pl.DataFrame(rows)


def readings(n: int, seed: int, info: pl.DataFrame) -> pl.DataFrame:
    """Failures follow the load ratio against the rating in force at the reading's time."""
    rng = np.random.default_rng(seed)
    machines = rng.integers(0, 40, n)
    ts = [T0 + timedelta(hours=float(h)) for h in rng.uniform(0, 24 * 40, n)]
    current = rng.uniform(4, 20, n)
    rows = pl.DataFrame({"machine_id": [f"M{m}" for m in machines], "ts": ts,
                         "current": current, "temperature": rng.normal(60, 8, n)})
    rated = rows.sort("ts").join_asof(info.sort("updated_at"), left_on="ts",
                                      right_on="updated_at", by="machine_id",
                                      check_sortedness=False)
    ratio = rated["current"] / rated["rated_current"]
    p = 1 / (1 + np.exp(-(6 * (ratio.to_numpy() - 1.0))))
    return rated.select("machine_id", "ts", "current", "temperature").with_columns(
        failed=pl.Series((rng.uniform(size=n) < p).astype(np.int64)))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    info = machine_info()
    out = {"info": tmp_path / "machine_info.csv", "train": tmp_path / "wear.csv"}
    info.write_csv(out["info"])
    readings(4000, 1, info).write_csv(out["train"])
    return out


def start(state_root: Path, start_daemon, missing_key: str = "null"):
    (state_root / "appliance.toml").write_text(CONFIG.replace("{missing_key}", missing_key))
    return start_daemon(state_root)


def test_feature_set_online_store_and_routes(state_root, start_daemon, files):
    daemon = start(state_root, start_daemon)
    drop(state_root, "machine_info", files["info"])
    wait_for(lambda: daemon.get("/v1/feature-sets/machine_info").json()["keys"] == 40,
             timeout=30, what="the online store")
    info = daemon.get("/v1/feature-sets/machine_info").json()
    assert info["rows"] == 60 and info["datasets"] == 1 and info["used_by"] == ["wear"]
    assert info["schema"]["rated_current"] == "Float64" and info["updated_at"]
    # The latest values per key: M0 was re-rated on day 20; M1 never was.
    m0 = daemon.get("/v1/feature-sets/machine_info/M0").json()
    assert m0["values"]["rated_current"] == 20.0 and m0["values"]["vendor"] == "zenith"
    assert daemon.get("/v1/feature-sets/machine_info/M1").json()["values"][
        "rated_current"] == 11.0
    assert daemon.get("/v1/feature-sets/machine_info/M999").status_code == 404
    assert daemon.get("/v1/feature-sets/nope").status_code == 404
    listed = daemon.get("/v1/feature-sets").json()["feature_sets"]
    assert [f["name"] for f in listed] == ["machine_info"]
    from click.testing import CliRunner

    from appliance.cli import cli

    out = CliRunner().invoke(cli, ["features", "--state-dir", str(state_root)])
    assert out.exit_code == 0 and "machine_info" in out.output and "keys=40" in out.output
    out = CliRunner().invoke(cli, ["features", "machine_info", "M0",
                                   "--state-dir", str(state_root)])
    assert out.exit_code == 0 and '"rated_current": 20.0' in out.output
    # A feature set is not a pipeline: nothing trains on it.
    assert "machine_info" not in [p["name"] for p in
                                  daemon.get("/v1/pipelines").json()["pipelines"]]
    # A later file updates the online store (freshness), keyed rows without a key dropped.
    later = pl.DataFrame({"machine_id": ["M1", None], "updated_at": [T0 + timedelta(days=50)] * 2,
                          "rated_current": [99.0, 1.0], "vendor": ["acme", "acme"]})
    path = files["info"].with_name("machine_info_2.csv")
    later.write_csv(path)
    drop(state_root, "machine_info", path)
    wait_for(lambda: daemon.get("/v1/feature-sets/machine_info/M1").json()["values"][
        "rated_current"] == 99.0, timeout=30, what="the update")
    ingestion = daemon.get("/v1/pipelines/machine_info/ingestions").json()["ingestions"][0]
    assert ingestion["status"] == "accepted" and "null key" in ingestion["warnings"][0]


def test_a_feature_set_file_without_its_key_is_refused(state_root, start_daemon, tmp_path):
    daemon = start(state_root, start_daemon)
    bad = tmp_path / "info.csv"
    pl.DataFrame({"id": ["M1"], "rated_current": [3.0]}).write_csv(bad)
    drop(state_root, "machine_info", bad)
    reason = state_root / "rejected/machine_info/info.csv.reason.json"
    wait_for(reason.exists, timeout=30, what="the refusal")
    body = json.loads(reason.read_text())
    assert body["code"] == "missing_key" and "feature_sets.machine_info" in body["message"]
    assert daemon.get("/health").status_code == 200


def test_training_joins_as_of_each_row_and_computes_derived_features(state_root,
                                                                       start_daemon, files):
    daemon = start(state_root, start_daemon)
    drop(state_root, "machine_info", files["info"])
    wait_for(lambda: daemon.get("/v1/feature-sets/machine_info").json()["keys"] == 40,
             timeout=30)
    drop(state_root, "wear", files["train"])
    daemon.wait_ready_model("wear", 1, timeout=120)
    meta = json.loads((state_root / "models/wear/1/model.json").read_text())
    spec = meta["spec"]
    names = [f["name"] for f in spec["features"]]
    assert {"rated_current", "vendor", "load_ratio", "temp_f", "current"} <= set(names)
    assert "updated_at" not in names  # the feature set's own time is not a feature
    assert spec["derived"] == {"load_ratio": "current / rated_current",
                               "temp_f": "temperature * 1.8 + 32"}
    assert spec["joins"][0]["feature_set"] == "machine_info"
    assert spec["derived_inputs"]["rated_current"] == "Float64"
    # The ratio against the rating in force at the time is what predicts failure.
    importance = meta["feature_importance"]
    assert max(importance, key=importance.get) == "load_ratio"
    assert meta["metrics"]["auc"] > 0.8


def trained(state_root: Path, start_daemon, files, missing_key: str = "null"):
    daemon = start(state_root, start_daemon, missing_key)
    drop(state_root, "machine_info", files["info"])
    wait_for(lambda: daemon.get("/v1/feature-sets/machine_info").json()["keys"] == 40,
             timeout=30)
    drop(state_root, "wear", files["train"])
    daemon.wait_ready_model("wear", 1, timeout=120)
    return daemon


def test_prediction_fills_features_by_key_and_computes_derived_ones(state_root, start_daemon,
                                                                     files):
    daemon = trained(state_root, start_daemon, files)
    raw = {"machine_id": "M2", "ts": "2026-02-20T10:00:00", "current": 21.0,
           "temperature": 61.5}
    # M2 was re-rated to 22.0 on day 20 ("zenith"): what the online store holds now.
    full = {**raw, "rated_current": 22.0, "vendor": "zenith", "load_ratio": 21.0 / 22.0,
            "temp_f": 61.5 * 1.8 + 32}

    def predict(rows: list[dict]) -> dict:
        resp = daemon.post("/v1/pipelines/wear/predict", json={"rows": rows})
        assert resp.status_code == 200, resp.text
        return resp.json()

    by_key, sent = predict([raw]), predict([full])
    assert by_key["predictions"] == sent["predictions"]
    # A value in the request wins over the stored one, and the derived feature follows it.
    over = predict([{**raw, "rated_current": 10.0}])["predictions"][0]
    assert over == predict([{**full, "rated_current": 10.0,
                             "load_ratio": 2.1}])["predictions"][0]
    assert over != by_key["predictions"][0]
    # Batches take the same path.
    batch = predict([raw, {**raw, "machine_id": "M3"}])
    assert batch["predictions"][0] == by_key["predictions"][0]
    # An unknown key: missing values under the default policy.
    unknown = predict([{**raw, "machine_id": "M999"}])
    assert unknown["predictions"] == predict([{**full, "machine_id": "M999",
                                               "rated_current": None, "vendor": None,
                                               "load_ratio": None}])["predictions"]
    # A derived feature's input of the wrong type is named.
    bad = daemon.post("/v1/pipelines/wear/predict",
                      json={"rows": [{**raw, "current": "high"}]})
    assert bad.status_code == 422 and "current" in bad.json()["message"]


def test_unknown_key_is_refused_under_the_error_policy(state_root, start_daemon, files):
    daemon = trained(state_root, start_daemon, files, missing_key="error")
    raw = {"machine_id": "M999", "ts": "2026-02-20T10:00:00", "current": 5.0,
           "temperature": 60.0}
    resp = daemon.post("/v1/pipelines/wear/predict", json={"rows": [raw]})
    assert resp.status_code == 422
    body = resp.json()
    assert body["details"]["field"] == "machine_id" and "M999" in body["message"]
    ok = daemon.post("/v1/pipelines/wear/predict", json={"rows": [{**raw, "machine_id": "M1"}]})
    assert ok.status_code == 200


def test_training_and_serving_compute_the_same_features_bit_for_bit(tmp_path, files):
    from appliance.core import parse
    from appliance.features import build_spec, to_matrix
    from appliance.features.featurestore import FeatureStore, online_entries
    from appliance.store import Store

    settings = parse({"feature_sets": {"machine_info": {"key": "machine_id",
                                                        "timestamp": "updated_at"}},
                      "pipelines": {"wear": {"target": "failed", "timestamp": "ts",
                                             "join": ["machine_info"],
                                             "derived": {"load_ratio": "current / rated_current",
                                                         "temp_f": "temperature * 1.8 + 32"}}}})
    store = Store.open(tmp_path / "a.db")
    info = pl.read_csv(files["info"], try_parse_dates=True)
    (tmp_path / "datasets").mkdir()
    info.write_parquet(tmp_path / "datasets" / "info.parquet")
    store.record_ingestion(pipeline="machine_info", file_name="info.csv", status="accepted",
                           received_at="t", dataset=("datasets/info.parquet", info.height, "h"))
    features = FeatureStore(settings, store, tmp_path)
    store.upsert_online_features("machine_info",
                                 online_entries(info, "machine_id", "updated_at"), 1,
                                 "updated_at")
    features.load()
    rows = pl.read_csv(files["train"], try_parse_dates=True)
    training, serving = features.prepare(rows, settings.pipeline("wear"))
    spec = build_spec(training, settings.pipeline("wear"), "binary")
    spec.joins, spec.derived = serving["joins"], serving["derived"]
    spec.derived_inputs = serving["derived_inputs"]
    # Rows after the last re-rating: the online store's latest values are the ones in force.
    late = training.filter(pl.col("ts") > T0 + timedelta(days=20)).head(300)
    requests = [json.loads(json.dumps(r, default=str)) for r in
                late.select("machine_id", "ts", "current", "temperature").to_dicts()]
    features.prepare_rows(spec, requests, "null")
    served = pl.DataFrame(requests).select(late.select(pl.exclude("failed")).columns)
    for col in ("rated_current", "vendor", "load_ratio", "temp_f"):
        assert served[col].to_list() == late[col].to_list(), col  # bit for bit
    # So the model's input matrix is the same, and so are its predictions.
    assert np.array_equal(to_matrix(served.with_columns(pl.col("ts").str.to_datetime()), spec),
                          to_matrix(late, spec), equal_nan=True)


def test_an_online_store_smaller_than_the_feature_set_serves_every_key(state_root,
                                                                     start_daemon, files):
    """Memory for 3 keys of 40: every machine's prediction by key is still the one with
    its latest values sent, before and after a new version re-rates some machines."""
    (state_root / "appliance.toml").write_text(
        CONFIG.replace("{missing_key}", "error") + "\n[online_store]\nmax_keys = 3\n")
    daemon = start_daemon(state_root)
    drop(state_root, "machine_info", files["info"])
    wait_for(lambda: daemon.get("/v1/feature-sets/machine_info").json()["keys"] == 40,
             timeout=30)
    drop(state_root, "wear", files["train"])
    daemon.wait_ready_model("wear", 1, timeout=120)

    def check(latest: pl.DataFrame) -> None:
        raws, fulls = [], []
        for m in latest.to_dicts():
            raw = {"machine_id": m["machine_id"], "ts": "2026-03-01T08:00:00",
                   "current": 15.0, "temperature": 60.0}
            raws.append(raw)
            fulls.append({**raw, "rated_current": m["rated_current"], "vendor": m["vendor"]})
        singles = [daemon.post("/v1/pipelines/wear/predict", json={"rows": [r]}).json()
                   ["predictions"][0] for r in raws]
        by_key = daemon.post("/v1/pipelines/wear/predict", json={"rows": raws}).json()
        sent = daemon.post("/v1/pipelines/wear/predict", json={"rows": fulls}).json()
        assert by_key["predictions"] == sent["predictions"] == singles

    info = pl.read_csv(files["info"], try_parse_dates=True)
    check(info.sort("updated_at").group_by("machine_id", maintain_order=True).last())
    rerated = pl.DataFrame({"machine_id": ["M1", "M3", "M39"],
                            "updated_at": [T0 + timedelta(days=60)] * 3,
                            "rated_current": [30.0, 31.0, 39.0], "vendor": ["new"] * 3})
    path = files["info"].with_name("machine_info_2.csv")
    rerated.write_csv(path)
    daemon.post("/v1/pipelines/wear/predict", json={"rows": [
        {"machine_id": "M1", "ts": "2026-03-01T08:00:00", "current": 1.0,
         "temperature": 1.0}]})  # M1 is held in memory when the new version lands
    drop(state_root, "machine_info", path)
    wait_for(lambda: daemon.get("/v1/feature-sets/machine_info/M1").json()["values"][
        "rated_current"] == 30.0, timeout=30, what="the new version")
    both = pl.concat([info, rerated.with_columns(
        pl.col("updated_at").cast(info.schema["updated_at"]))], how="vertical_relaxed")
    check(both.sort("updated_at").group_by("machine_id", maintain_order=True).last())


def test_a_pipelines_file_before_its_feature_set_trains_once_the_features_come(
        state_root, start_daemon, files):
    """Both dropped at once, the pipeline's file may be taken first (the demo drops them so):
    its data waits for the feature set, with an event that says so, instead of a training
    that fails and a retry 30 s later; the feature set's first file starts the training."""
    daemon = start(state_root, start_daemon)
    drop(state_root, "wear", files["train"])
    waiting = wait_for(lambda: [e for e in daemon.get("/v1/events", params={"limit": 50})
                                .json()["events"] if e["kind"] == "training_waiting"],
                       timeout=30, what="the data waiting for its feature set")
    assert "machine_info" in waiting[0]["message"] and waiting[0]["pipeline"] == "wear"
    assert daemon.get("/v1/pipelines/wear/jobs").json()["history"] == []
    drop(state_root, "machine_info", files["info"])
    daemon.wait_ready_model("wear", 1, timeout=15)
    jobs = daemon.wait_jobs_closed("wear", 1, timeout=30)
    assert [(j["trigger"], j["status"]) for j in jobs] == [("new_data", "succeeded")]
