"""Drift of small files through the real daemon: a 150-row file whose sensor died and a
150-row file with one feature shifted by 2 SD are each flagged on that feature alone, and
the pipeline's headline (the overview's drift column, the event feed, /metrics) says
drift."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAST_CONFIG, SAMPLES, drop, wait_for

NO_RETRAIN = FAST_CONFIG + "[pipelines.machines.retrain]\nmin_new_rows = 1000000\n"


def ingestion_reports(daemon) -> list[dict]:
    body = daemon.get("/v1/pipelines/machines/drift").json()
    return [h for h in body["history"] if h["source"] == "ingestion"]


def drop_frame(state: Path, frame: pl.DataFrame, name: str, tmp: Path) -> None:
    path = tmp / name
    frame.write_csv(path)
    drop(state, "machines", path)


def test_150_row_files_a_dead_sensor_and_a_shift_flag_that_feature(machines_state,
                                                                    start_daemon, tmp_path):
    (machines_state / "appliance.toml").write_text(NO_RETRAIN)
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    base = pl.read_csv(SAMPLES / "machines_02.csv")
    sd = pl.read_csv(SAMPLES / "machines_01.csv")["temperature_c"].std()

    # The vibration sensor died: its column is empty in a 150-row file.
    dead = base.slice(0, 150).with_columns(pl.lit(None, dtype=pl.Float64)
                                           .alias("vibration_mm_s"))
    drop_frame(machines_state, dead, "dead_sensor.csv", tmp_path)
    wait_for(lambda: len(ingestion_reports(daemon)) >= 1, 60, what="the dead file's check")
    # Then the window: this small file with the newest rows before it.
    body = wait_for(lambda: (b := daemon.get("/v1/pipelines/machines/drift").json())[
        "window"] and b, 60, what="the window's check")
    latest = body["latest"]
    assert latest["source"] == "ingestion" and latest["rows"] == 150
    assert latest["method"] == "tests"
    assert [f["feature"] for f in latest["features"] if f["drifted"]] == ["vibration_mm_s"]
    vib = next(f for f in latest["features"] if f["feature"] == "vibration_mm_s")
    assert vib["null_share"] == 1.0 and vib["severe"] and vib["p_value"] < 1e-9
    assert latest["severe"] == ["vibration_mm_s"] and latest["drifted"]
    assert "vibration_mm_s (severe: every value missing)" in latest["summary"]
    assert body["status"] == "drift"
    summary = daemon.get("/v1/pipelines").json()["pipelines"][0]
    assert summary["drift_status"] == "drift" and summary["drift_summary"] == body["summary"]
    events = daemon.get("/v1/events?pipeline=machines").json()["events"]
    detected = {e["details"]["source"]: e for e in events if e["kind"] == "drift_detected"}
    assert detected["ingestion"]["details"]["features"] == ["vibration_mm_s"]
    assert detected["ingestion"]["message"].startswith(latest["summary"])
    # The window (this file and the newest rows before it) has 15% missing: drift too.
    assert "vibration_mm_s" in detected["window"]["details"]["features"]
    assert body["window"]["rows"] == 1000

    # Temperature reads 2 SD high in the next 150 rows; the vibration sensor is back.
    shifted = base.slice(150, 150).with_columns(pl.col("temperature_c") + 2 * sd)
    drop_frame(machines_state, shifted, "shifted.csv", tmp_path)
    wait_for(lambda: len(ingestion_reports(daemon)) >= 2, 60, what="the shifted file's check")
    latest = daemon.get("/v1/pipelines/machines/drift").json()["latest"]
    assert latest["rows"] == 150 and latest["method"] == "tests"
    assert [f["feature"] for f in latest["features"] if f["drifted"]] == ["temperature_c"]
    temp = next(f for f in latest["features"] if f["feature"] == "temperature_c")
    assert temp["p_value"] < 1e-9 and temp["test"] in ("ks", "chi2")
    assert latest["drifted"] and latest["severe"] == ["temperature_c"]  # PSI above 1

    text = daemon.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_drift_detected", (("pipeline", "machines"),))] == 1
    assert samples[("appliance_drift_severe_features", (("pipeline", "machines"),))] >= 1
    assert 0 < samples[("appliance_drift_importance_share_ratio",
                        (("pipeline", "machines"),))] < 1
    assert samples[("appliance_drift_p_value", (("feature", "temperature_c"),
                                                ("pipeline", "machines")))] < 1e-9
