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
