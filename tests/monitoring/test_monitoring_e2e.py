"""Monitoring through the real daemon over HTTP: request windows under concurrent clients,
`/metrics` for Prometheus, `/v1/system`, and drift after a drifted batch is dropped."""

from __future__ import annotations

import random
import sqlite3
import threading

import httpx
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAST_CONFIG, SAMPLES, drop, wait_for

TARGET = "failed_within_24h"


def test_windows_are_exact_under_concurrent_requests(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    rows = pl.read_csv(SAMPLES / "machines_02.csv").head(200).drop(TARGET).to_dicts()
    sent = {"requests": 0, "rows": 0, "4xx": 0}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=daemon.url, timeout=30) as http:
            for _ in range(30):
                n = rng.randint(1, 5)
                batch = rng.sample(rows, n)
                bad = rng.random() < 0.2
                if bad:
                    batch = [{**batch[0], "rpm": "fast"}]
                r = http.post("/v1/pipelines/machines/predict", json={"rows": batch})
                assert r.status_code == (422 if bad else 200), r.text
                with lock:
                    sent["requests"] += 1
                    sent["rows"] += 0 if bad else n
                    sent["4xx"] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # A body that is not JSON is refused by the framework itself: counted too.
    bad = daemon.http.post("/v1/pipelines/machines/predict", content=b"{rows",
                           headers={"content-type": "application/json"})
    assert bad.status_code == 400
    sent["requests"] += 1
    sent["4xx"] += 1
    # Requests for a pipeline that does not exist are refused and never counted.
    assert daemon.post("/v1/pipelines/ghost/predict", json={"rows": [{}]}).status_code == 404

    windows = daemon.get("/v1/pipelines/machines/metrics?seconds=600").json()["windows"]
    assert sum(w["requests"] for w in windows) == sent["requests"] == 241
    assert sum(w["rows"] for w in windows) == sent["rows"]
    assert sum(w["errors_4xx"] for w in windows) == sent["4xx"] > 0
    assert sum(w["errors_5xx"] for w in windows) == 0
    assert all(w["seconds"] == 10 and w["p50_ms"] <= w["p99_ms"] for w in windows)

    summary = daemon.get("/v1/pipelines").json()["pipelines"][0]
    assert summary["requests_per_s"] > 0 and summary["p50_ms"] > 0
    assert 0 < summary["error_rate"] < 1

    text = daemon.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("appliance_requests_total", (("pipeline", "machines"),))] == 241
    assert samples[("appliance_predicted_rows_total", (("pipeline", "machines"),))] \
        == sent["rows"]
    assert samples[("appliance_request_errors_total",
                    (("class", "4xx"), ("pipeline", "machines")))] == sent["4xx"]
    assert samples[("appliance_request_duration_seconds_count",
                    (("pipeline", "machines"),))] == 241
    assert not any("ghost" in str(k) for k in samples)
    assert samples[("appliance_model_production_version", (("pipeline", "machines"),))] == 1
    assert samples[("appliance_process_resident_memory_bytes", ())] > 10e6

    system = daemon.get("/v1/system?seconds=300").json()["samples"]
    assert system and system[-1]["process_rss_bytes"] > 10e6
    assert system[-1]["disk_free_bytes"] > 0 and system[-1]["process_threads"] > 1
    assert daemon.get("/v1/system?resolution=weekly").status_code == 400

    # Stopped cleanly, every window is in SQLite: raw and in its hourly roll-up.
    assert daemon.stop() == 0
    with sqlite3.connect(machines_state / "appliance.db") as db:
        raw, hourly = (db.execute(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(rows), 0) FROM request_windows"
            f" WHERE pipeline = 'machines' AND seconds {op} 3600").fetchone()
            for op in ("<", "="))
    assert raw == hourly == (241, sent["rows"])


def test_drift_route_after_a_drifted_batch(machines_state, start_daemon):
    # v1 serves throughout: no retraining on the new files (the reports stay about v1).
    (machines_state / "appliance.toml").write_text(
        FAST_CONFIG + "[pipelines.machines.retrain]\nmin_new_rows = 1000000\n")
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    assert daemon.get("/v1/pipelines/machines/drift").json() == {
        "pipeline": "machines", "latest": None, "history": [], "window": None,
        "status": None, "summary": None}

    def reports(n: int) -> object:
        body = daemon.get("/v1/pipelines/machines/drift").json()
        return body if len(body["history"]) >= n else None

    # A batch from the same process: checked, nothing drifts.
    drop(machines_state, "machines", SAMPLES / "machines_02.csv")
    calm = wait_for(lambda: reports(1), timeout=60, what="the drift check of batch 2")
    assert calm["latest"]["source"] == "ingestion" and calm["latest"]["rows"] == 1500
    assert not calm["latest"]["drifted"]
    assert [f["feature"] for f in calm["latest"]["features"] if f["drifted"]] == []

    drop(machines_state, "machines", SAMPLES / "machines_03_drifted.csv")
    body = wait_for(lambda: reports(2), timeout=60, what="the drift check of batch 3")
    latest = body["latest"]
    flagged = {f["feature"] for f in latest["features"] if f["drifted"]}
    assert flagged == {"temperature_c", "vibration_mm_s", "humidity_pct"}
    # Fewer than half of the features moved, but they moved far (PSI above 1): the
    # headline says drift, with the share of the model's gain those features carry.
    assert abs(latest["drifted_share"] - 3 / 9) < 1e-5 and latest["drifted"]
    assert latest["method"] == "effect_sizes" and latest["severe"]
    assert set(latest["severe"]) <= flagged
    assert 0 < latest["importance_share"] < 1
    gains = [f["importance"] for f in latest["features"]]
    assert abs(sum(g for f, g in zip(latest["features"], gains, strict=True) if f["drifted"])
               - latest["importance_share"]) < 1e-5
    assert latest["summary"].startswith("drift: 3 of 9 features (33%), carrying ")
    assert latest["prediction"]["drifted"]
    temp = next(f for f in latest["features"] if f["feature"] == "temperature_c")
    assert temp["psi"] > 0.2 and temp["ks"] > 0.2 and temp["threshold"] == 0.2
    assert [h["source"] for h in body["history"]] == ["ingestion", "ingestion"]
    assert body["history"][-1]["psi"]["temperature_c"] == temp["psi"]
    assert body["history"][-1]["importance_share"] == latest["importance_share"]

    assert body["status"] == "drift" and body["summary"] == latest["summary"]
    assert body["window"] is None  # 1,500 rows: a file this size is its own window
    # The overview's drift column reads the headline from the pipeline's summary.
    summary = daemon.get("/v1/pipelines").json()["pipelines"][0]
    assert summary["drift_status"] == "drift"
    assert summary["drift_importance_share"] == latest["importance_share"]
    assert summary["drift_summary"] == latest["summary"]

    events = daemon.get("/v1/events?pipeline=machines").json()["events"]
    detected = [e for e in events if e["kind"] == "drift_detected"]
    assert len(detected) == 1 and detected[0]["level"] == "warning"
    assert set(detected[0]["details"]["features"]) == flagged
    assert detected[0]["details"]["severe"] == latest["severe"]
    assert detected[0]["message"].startswith(latest["summary"])
    assert daemon.get("/v1/pipelines/ghost/drift").status_code == 404
