"""Shadow scoring with the real daemon: a candidate under ``promotion.policy = "shadow"``
scores live requests beside production (callers always get production's answers), and once
feedback comes back it is promoted when it is not worse, rejected when it is.

Two pipelines in one daemon, each trained on its newest batch only (``window_rows``):
live traffic follows feature ``f0``. In `better`, production learned a batch where the
label followed ``f1`` and the candidate one that follows ``f0``; in `worse`, the other way
round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tests.conftest import drop, wait_for
from tests.models.test_models_http import predict, wait_version

CONFIG = """
[ingest]
settle_seconds = 0.2
rescan_seconds = 1.0

[shadow]
sample_rate = 1.0
min_requests = 60
min_labelled = 60
window_seconds = 1.0

[rollout]
watch_seconds = 0
"""

PIPELINE = """
[pipelines.{name}]
target = "y"
[pipelines.{name}.train]
window_rows = 1500
[pipelines.{name}.retrain]
hold_suspect = false
[pipelines.{name}.promotion]
policy = "shadow"
"""


def batch(n: int, seed: int, driver: int) -> pl.DataFrame:
    """Rows whose label follows feature ``f{driver}``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * x[:, driver]))).astype(np.int64)
    return pl.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "y": y})


def written(tmp: Path, frame: pl.DataFrame, name: str) -> Path:
    path = tmp / name
    frame.write_parquet(path)
    return path


def models(daemon, pipeline: str) -> dict[int, dict]:
    return {m["version"]: m for m in
            daemon.get(f"/v1/pipelines/{pipeline}/models").json()["models"]}


def test_a_better_shadow_is_promoted_and_a_worse_one_rejected(state_root, start_daemon,
                                                              tmp_path):
    (state_root / "appliance.toml").write_text(
        CONFIG + PIPELINE.format(name="better") + PIPELINE.format(name="worse"))
    daemon = start_daemon(state_root)
    first = {"better": 1, "worse": 0}  # the feature production's batch followed
    for pipeline, driver in first.items():
        drop(state_root, pipeline,
             written(tmp_path, batch(1500, 1, driver), f"{pipeline}1.parquet"))
    for pipeline in first:
        daemon.wait_ready_model(pipeline, 1)
        drop(state_root, pipeline,
             written(tmp_path, batch(1500, 2, 1 - first[pipeline]), f"{pipeline}2.parquet"))
    for pipeline in first:
        wait_for(lambda p=pipeline: models(daemon, p).get(2, {}).get("policy_state"),
                 timeout=90, what=f"{pipeline} v2 to shadow")
        v2 = models(daemon, pipeline)[2]
        assert v2["stage"] == "candidate"
        assert v2["policy_state"].startswith("shadowing"), v2

    live = batch(80, 3, 0)
    rows = live.drop("y").to_dicts()
    for pipeline in first:
        ids = []
        for row in rows:
            answer = predict(daemon, pipeline, [row])
            assert answer["model_version"] == 1  # never the candidate's answer
            ids.extend(answer["prediction_ids"])
        # The shadow scored them all, off the request path, and says so.
        wait_for(lambda p=pipeline: (models(daemon, p)[2].get("shadow") or {})
                 .get("scored", 0) >= len(rows), timeout=30, what="the shadow's numbers")
        shadow = models(daemon, pipeline)[2]["shadow"]
        assert shadow["requests"] == len(rows) and shadow["errors"] == 0
        assert shadow["agreement"] is not None and shadow["production_p99_ms"] is not None
        feedback = pl.DataFrame({"prediction_id": ids, "y": live["y"]})
        drop(state_root, pipeline, written(tmp_path, feedback, f"{pipeline}_feedback.parquet"))

    better = wait_version(daemon, "better", 2, timeout=60)
    assert better["stage"] == "production", better["decision"]
    assert better["decision"].startswith("promoted by its shadow"), better["decision"]
    worse = wait_version(daemon, "worse", 2, timeout=60)
    assert worse["stage"] == "rejected", worse["decision"]
    assert worse["decision"].startswith("rejected by its shadow"), worse["decision"]
    assert "worse" in worse["decision"] and "auc" in worse["decision"]
    # The production of `worse` never changed; `better` now answers with v2.
    assert predict(daemon, "worse", rows[:1])["model_version"] == 1
    assert predict(daemon, "better", rows[:1])["model_version"] == 2
    # The event follows the stage change by a moment: wait for it, don't race it.
    wait_for(lambda: {("shadow_started", "better"), ("not_promoted", "worse")} <= {
        (e["kind"], e["pipeline"]) for e in daemon.get("/v1/events").json()["events"]},
        timeout=10, what="the shadow's events")


def test_a_shadow_survives_a_restart_with_its_numbers(state_root, start_daemon, tmp_path):
    (state_root / "appliance.toml").write_text(CONFIG + PIPELINE.format(name="better"))
    daemon = start_daemon(state_root)
    drop(state_root, "better", written(tmp_path, batch(1500, 1, 1), "b1.parquet"))
    daemon.wait_ready_model("better", 1)
    drop(state_root, "better", written(tmp_path, batch(1500, 2, 0), "b2.parquet"))
    wait_for(lambda: models(daemon, "better").get(2, {}).get("policy_state"), timeout=90,
             what="v2 to shadow")
    rows = batch(30, 3, 0).drop("y").to_dicts()
    for row in rows:
        predict(daemon, "better", [row])
    wait_for(lambda: (models(daemon, "better")[2].get("shadow") or {}).get("scored") == 30,
             timeout=30, what="the shadow to score them")
    assert daemon.stop() == 0, daemon.log()

    daemon = start_daemon(state_root)
    daemon.wait_ready_model("better", 1)
    v2 = models(daemon, "better")[2]
    assert v2["stage"] == "candidate" and v2["policy_state"].startswith("shadowing 30 of 60")
    assert v2["shadow"]["requests"] == 30 and v2["shadow"]["scored"] == 30
    for row in rows[:10]:
        assert predict(daemon, "better", [row])["model_version"] == 1
    wait_for(lambda: models(daemon, "better")[2]["shadow"]["scored"] == 40, timeout=30,
             what="the resumed shadow to score more")
