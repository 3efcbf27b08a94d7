"""A sensor that was off in a pipeline's first file, through the real daemon: the first
model trains without the empty column (and serves without it), the file that brings its
values types it, and the next model uses it as the numbers it is."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from tests.conftest import drop, wait_for

CONFIG = ("[ingest]\nsettle_seconds = 0.2\n[train]\nthreads = 1\nnum_boost_round = 30\n"
          "[pipelines.line]\ntarget = \"y\"\n")


def batch(path, seed: int, sensor_on: bool):
    rng = np.random.default_rng(seed)
    n = 400
    v, s = rng.normal(size=n), rng.normal(size=n)
    y = (v + (2 * s if sensor_on else 0) + rng.normal(0, 0.5, n) > 0).astype(int)
    pl.DataFrame({"v": v, "sensor": s if sensor_on else [None] * n,
                  "y": y}).write_csv(path)
    return path


def features(state_root, version: int) -> dict[str, str]:
    spec = json.loads((state_root / f"models/line/{version}/model.json").read_text())["spec"]
    return {f["name"]: f["kind"] for f in spec["features"]}


def test_a_column_empty_at_first_becomes_a_numeric_feature(state_root, start_daemon, tmp_path):
    (state_root / "appliance.toml").write_text(CONFIG)
    daemon = start_daemon(state_root)
    drop(state_root, "line", batch(tmp_path / "a.csv", 1, sensor_on=False))
    daemon.wait_ready_model("line", 1)
    assert daemon.get("/v1/pipelines/line").json()["schema"]["sensor"] == "Null"
    assert features(state_root, 1) == {"v": "numeric"}
    ok = daemon.post("/v1/pipelines/line/predict", json={"rows": [{"v": 0.3}]})
    assert ok.status_code == 200, ok.text
    drop(state_root, "line", batch(tmp_path / "b.csv", 2, sensor_on=True))
    wait_for(lambda: (state_root / "models/line/2/model.json").exists(), timeout=60,
             what="model v2")
    assert daemon.get("/v1/pipelines/line").json()["schema"]["sensor"] == "Float64"
    assert features(state_root, 2) == {"v": "numeric", "sensor": "numeric"}
    ingestions = daemon.get("/v1/pipelines/line/ingestions").json()
    warnings = [w for i in ingestions["ingestions"] for w in i["warnings"]]
    assert any("`sensor` Float64" in w for w in warnings), warnings
