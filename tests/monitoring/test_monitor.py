"""The monitor in-process, over a real SQLite file and a real LightGBM model: request
windows and percentiles, months of retention, feedback joined to predictions, drift of
sampled inputs, pressure events and the Prometheus exposition."""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.api_types import PipelineSummary
from appliance.core import StateDir, config
from appliance.daemon import Services
from appliance.models import LiveModels
from appliance.models.metrics import auc
from appliance.monitoring import LATENCY_BOUNDS, Monitor, RequestMetrics, percentile
from appliance.store import Events, ResourceRecord, Store
from tests.conftest import FAST_CONFIG, SAMPLES
from tests.monitoring.prometheus_conventions import naming_problems

TARGET = "failed_within_24h"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- a trained state directory, made once and copied per test ---------------------------


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(FAST_CONFIG)
    services = Services.build(config.load(root), StateDir(root))
    claimed = services.state.pipeline_dir(services.state.processing, "machines") / "1__m01.csv"
    shutil.copyfile(SAMPLES / "machines_01.csv", claimed)
    services.ingester.process(claimed, "machines")
    assert services.trainer.wait_idle(120)
    assert services.live.get("machines") is not None
    services.trainer.shutdown()
    services.store.close()
    return root


@pytest.fixture
def machines(trained_template: Path, tmp_path: Path) -> Callable[..., Services]:
    """Services over a copy of the trained state; extra TOML may be appended."""
    built: list[Services] = []

    def build(extra: str = "") -> Services:
        root = tmp_path / f"state{len(built)}"
        shutil.copytree(trained_template, root)
        (root / "appliance.toml").write_text(FAST_CONFIG + extra)
        services = Services.build(config.load(root), StateDir(root))
        services.load_production_models()
        built.append(services)
        return services

    yield build
    for s in built:
        s.trainer.shutdown()
        s.store.close()


def events_of(services: Services, kind: str) -> list:
    return [e for e in services.store.events(limit=1000) if e.kind == kind]


# --- request windows ------------------------------------------------------------------


def test_windows_count_per_window_and_percentiles_follow_the_data():
    clock = Clock(1_000_000.0)
    metrics = RequestMetrics(10.0, clock)
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(np.log(0.004), 0.6, 3000)
    for i, seconds in enumerate(latencies):
        clock.now = 1_000_000.0 + i * 0.01  # 3000 requests over 30 s: three windows
        status = 422 if i % 50 == 0 else 503 if i % 101 == 0 else 200
        metrics.record("p", status, float(seconds))
        metrics.add_rows("p", 2)
    clock.now = 1_000_030.5
    closed = metrics.take_closed()
    assert [w.start for w in closed] == [1_000_000.0, 1_000_010.0, 1_000_020.0]
    assert [w.requests for w in closed] == [1000, 1000, 1000]
    assert sum(w.rows for w in closed) == 6000
    assert sum(w.errors_4xx for w in closed) == len(range(0, 3000, 50))
    assert sum(w.errors_5xx for w in closed) == sum(
        1 for i in range(3000) if i % 101 == 0 and i % 50 != 0)
    assert metrics.take_closed() == []  # taken once
    for w, chunk in zip(closed, np.split(latencies, 3), strict=True):
        assert sum(w.buckets) == 1000 and w.latency_sum == pytest.approx(chunk.sum())
        for q in (0.5, 0.95, 0.99):
            # Buckets are at most 1.33x apart: interpolation lands well within that.
            assert percentile(w.buckets, q) == pytest.approx(np.quantile(chunk, q), rel=0.15)
    # The open window is flushed when forced (at shutdown), never lost.
    metrics.record("p", 200, 0.002)
    assert [w.requests for w in metrics.pending("p")] == [1]
    assert [w.requests for w in metrics.take_closed(force=True)] == [1]
    assert percentile([0] * (len(LATENCY_BOUNDS) + 1), 0.5) is None
    assert metrics.totals()["p"].requests == 3001


# --- retention --------------------------------------------------------------------------


def test_months_of_windows_stay_within_retention_and_the_file_stops_growing(tmp_path):
    settings = config.parse({"monitor": {"predictions_max_rows": 1000,
                                         "predictions_max_age_days": 30}})
    store = Store.open(tmp_path / "a.db")
    clock = Clock(1_700_000_000.0 - 1_700_000_000.0 % 86400)
    monitor = Monitor(store, settings, Events(store), LiveModels(), tmp_path, clock=clock)
    day, step = 86400.0, 1200.0  # one busy window every 20 minutes, for 200 days
    sizes = {}
    for d in range(200):
        for k in range(int(day / step)):
            clock.now += step
            for pipeline in ("a", "b"):
                monitor.requests.record(pipeline, 200, 0.003)
                monitor.requests.record(pipeline, 500 if k % 7 == 0 else 200, 0.02)
            store.add_resource_sample(ResourceRecord(
                seconds=5, ts=clock.now, process_cpu_percent=10.0 + k % 5, process_rss_bytes=1e8,
                process_threads=9, process_open_files=20, cpu_percent=30.0,
                memory_available_bytes=int(2e9 - k), memory_percent=40.0, load_1m=0.5,
                disk_free_bytes=int(5e10 - d), temperature_c=None))
        store.insert_predictions([
            (secrets.token_hex(8), "a", clock.now - i, 1, "0.5", None) for i in range(100)])
        store.add_drift_report(pipeline="a", ts=clock.now, source="predictions",
                               model_version=1, rows=500, drifted=False, drifted_share=0.0,
                               report={"features": []})
        monitor.flush_windows()
        monitor.apply_retention()
        if d in (120, 199):
            with sqlite3.connect(store.path) as c:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes[d] = store.path.stat().st_size
    now = clock.now
    with sqlite3.connect(store.path) as c:
        def one(sql: str, *params: object) -> tuple:
            return c.execute(sql, params).fetchone()

        raw = one("SELECT COUNT(*), MIN(start) FROM request_windows WHERE seconds < 3600")
        hourly = one("SELECT COUNT(*), MIN(start) FROM request_windows WHERE seconds = 3600")
        assert raw[1] >= now - 48 * 3600 and raw[0] <= 2 * 48 * 3 + 2
        assert hourly[1] >= now - 90 * day - 3600 and hourly[0] <= 2 * (90 * 24 + 1)
        assert hourly[0] > 2 * 89 * 24  # ... and the roll-ups of 90 days are all there
        res_raw = one("SELECT COUNT(*), MIN(ts) FROM resource_samples WHERE seconds < 3600")
        assert res_raw[1] >= now - 48 * 3600 and res_raw[0] <= 48 * 3 + 1
        assert one("SELECT MIN(ts) FROM resource_samples")[0] >= now - 90 * day - 3600
        assert one("SELECT MIN(ts) FROM drift_reports")[0] >= now - 90 * day
        # Predictions: by age (30 days of 100 a day), then by count (1000 per pipeline).
        assert one("SELECT COUNT(*) FROM predictions")[0] == 1000
        # Each hour's roll-up is the sum of its raw windows (within the raw retention).
        sums = c.execute(
            "SELECT r.start, r.requests, r.errors_5xx, SUM(w.requests), SUM(w.errors_5xx)"
            " FROM request_windows r JOIN request_windows w ON w.pipeline = r.pipeline"
            " AND w.seconds < 3600 AND w.start >= r.start AND w.start < r.start + 3600"
            " WHERE r.seconds = 3600 AND r.pipeline = 'a' AND r.start >= ?"
            " GROUP BY r.start", [now - 47 * 3600]).fetchall()
        assert len(sums) >= 46 and all(s[1] == s[3] and s[2] == s[4] for s in sums)
    # Deleted pages are reused: the file stops growing once retention is steady.
    assert sizes[199] <= sizes[120] * 1.1, sizes
    # The API reads hourly roll-ups for long ranges, raw windows for short ones.
    long = monitor.pipeline_metrics("a", seconds=60 * day)
    assert {w.seconds for w in long.windows} == {3600.0} and len(long.windows) >= 60 * 24
    assert sum(w.requests for w in long.windows) == 2 * 60 * 72
    short = monitor.pipeline_metrics("a", seconds=3600)
    # The windows that start in the last hour, both ends included: -60, -40, -20, 0 min.
    assert {w.seconds for w in short.windows} == {10.0} and len(short.windows) == 4
    assert short.windows[0].p50_ms is not None
    store.close()


# --- feedback and live performance ----------------------------------------------------


def test_feedback_is_joined_to_the_right_predictions_and_scored(machines):
    services = machines()
    monitor, store = services.monitor, services.store
    model = services.live.get("machines")
    batch = pl.read_csv(SAMPLES / "machines_02.csv").head(600)
    y = batch[TARGET].to_list()
    outputs = model.predict_rows(batch.drop(TARGET).to_dicts())
    hour = float(int(monitor.clock()) // 3600 * 3600 - 3 * 3600)
    ids = [f"id{i:04d}" for i in range(600)]
    # 300 predictions in one hour, 300 in the next; one more pipeline's prediction.
    store.insert_predictions([
        (pid, "machines", hour + (3600 if i >= 300 else 0) + i, model.version,
         json.dumps(out), None) for i, (pid, out) in enumerate(zip(ids, outputs, strict=True))
    ] + [("other1", "other", hour, 1, "0.9", None)])
    # True outcomes: right in the first hour, wrong (flipped) in the second; feedback for
    # an unknown id and for another pipeline's prediction is not joined.
    feedback = [(pid, y[i] if i < 300 else 1 - y[i]) for i, pid in enumerate(ids)]
    store.add_feedback("machines", [*feedback[::-1], ("nope", 1), ("other1", 1)])

    points = monitor.performance_check("machines")
    assert [(p.start, p.labelled, p.metric) for p in points] == [
        (hour, 300, "auc"), (hour + 3600, 300, "auc")]
    p = np.array(outputs)
    yy = np.array(y)
    assert points[0].value == pytest.approx(auc(yy[:300], p[:300]))
    assert points[1].value == pytest.approx(auc(1 - yy[300:], p[300:]))
    validation = store.production_model("machines").metrics["auc"]
    assert points[0].validation_value == pytest.approx(validation)
    assert points[0].value > 0.75 and points[1].value < 0.3

    degraded = events_of(services, "performance_degraded")
    assert len(degraded) == 1 and degraded[0].details["window_start"] == hour + 3600
    monitor.performance_check("machines")  # still degraded: no second event
    assert len(events_of(services, "performance_degraded")) == 1
    live = monitor.pipeline_metrics("machines", seconds=6 * 3600).live_performance
    assert [(x.start, x.labelled) for x in live] == [(hour, 300), (hour + 3600, 300)]


# --- drift of sampled prediction inputs -------------------------------------------------


def log_sample(services: Services, file: str, ts: float, n: int = 700) -> None:
    model = services.live.get("machines")
    rows = pl.read_csv(SAMPLES / file).head(n).drop(TARGET).to_dicts()
    outputs = model.predict_rows(rows)
    services.store.insert_predictions([
        (secrets.token_hex(8), "machines", ts + i * 0.001, model.version, json.dumps(out),
         json.dumps(row)) for i, (row, out) in enumerate(zip(rows, outputs, strict=True))
    ])


def test_sampled_inputs_drift_against_the_production_reference(machines):
    services = machines()
    monitor = services.monitor
    clock = Clock(monitor.clock())
    monitor.clock = clock
    assert "reference" in services.live.get("machines").meta

    assert monitor.drift_check("machines") is None  # nothing sampled yet
    # A few sampled inputs are checked too, by tests with a p-value.
    log_sample(services, "machines_02.csv", clock.now - 600, n=40)
    few = monitor.drift_check("machines")
    assert few is not None and few.rows == 40 and few.method == "tests"
    assert not few.drifted and not [f for f in few.features if f.drifted]
    assert all(f.p_value is not None for f in few.features)
    log_sample(services, "machines_02.csv", clock.now - 300, n=1160)
    calm = monitor.drift_check("machines")
    assert calm is not None and calm.source == "predictions" and calm.rows == 1200
    assert calm.method == "effect_sizes"
    assert not calm.drifted and not [f for f in calm.features if f.drifted]
    assert not calm.prediction.drifted
    assert monitor.drift_check("machines") is None  # nothing new since
    assert events_of(services, "drift_detected") == []

    clock.now += 2 * 3600  # the old samples leave the window; drifted traffic arrives
    log_sample(services, "machines_03_drifted.csv", clock.now - 60)
    report = monitor.drift_check("machines")
    flagged = {f.feature for f in report.features if f.drifted}
    assert flagged == {"temperature_c", "vibration_mm_s", "humidity_pct"}
    assert report.prediction.drifted
    assert len(events_of(services, "drift_detected")) == 1
    again = monitor.drift_check("machines", force=True)
    assert again is not None and len(events_of(services, "drift_detected")) == 1

    response = monitor.drift_response("machines")
    assert response.latest == again
    assert [h.drifted_share for h in response.history] == [
        0.0, 0.0, pytest.approx(1 / 3), pytest.approx(1 / 3)]
    assert report.drifted and report.severe  # PSI above 1: drift, though under half
    assert response.history[-1].psi["temperature_c"] > 0.2


def test_retrain_on_drift_when_configured(machines):
    services = machines('[pipelines.machines.retrain]\non_drift = true\nmin_new_rows = 1000000\n')
    monitor = services.monitor
    jobs_before = len(services.store.jobs("machines"))
    log_sample(services, "machines_03_drifted.csv", monitor.clock() - 60)
    assert monitor.drift_check("machines") is not None
    assert services.trainer.wait_idle(120)
    # Drift alone, with no labelled data newer than the production model: nothing to learn.
    assert len(services.store.jobs("machines")) == jobs_before
    # A labelled batch below min_new_rows arrives, and it drifts: that retrains.
    claimed = services.state.pipeline_dir(services.state.processing, "machines")
    path = claimed / "9__machines_03_drifted.csv"
    path.write_bytes((SAMPLES / "machines_03_drifted.csv").read_bytes())
    services.ingester.process(path, "machines")
    assert services.trainer.wait_idle(120)
    jobs = services.store.jobs("machines")
    assert jobs[0].trigger == "drift" and jobs[0].status == "succeeded"


# --- resources and pressure -----------------------------------------------------------


def test_pressure_events_are_raised_once_per_episode(machines):
    services = machines("[monitor]\nmin_free_disk_mb = 1000000000\n"
                        "min_available_memory_mb = 1000000000\n")
    for _ in range(3):
        sample = services.monitor.sample_resources()
    assert sample.process_rss_bytes > 10e6 and sample.process_threads >= 1
    assert sample.disk_free_bytes > 0 and sample.memory_available_bytes > 0
    assert len(events_of(services, "disk_pressure")) == 1
    assert len(events_of(services, "memory_pressure")) == 1
    assert len(services.monitor.system(3600).samples) == 3


# --- Prometheus -------------------------------------------------------------------------


def test_prometheus_exposition_parses_with_the_values(machines):
    services = machines()
    monitor = services.monitor
    for i in range(40):
        monitor.requests.record("machines", 422 if i % 10 == 0 else 200, 0.001 * (i + 1))
        monitor.requests.add_rows("machines", 3)
    monitor.sample_resources()
    log_sample(services, "machines_03_drifted.csv", monitor.clock() - 60)
    monitor.drift_check("machines")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(monitor.collector())
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(registry).decode())}

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"{sample} {labels} not exported")

    assert families["appliance_requests"].type == "counter"
    assert value("appliance_requests", "appliance_requests_total", pipeline="machines") == 40
    assert value("appliance_predicted_rows", "appliance_predicted_rows_total") == 120
    assert value("appliance_request_errors", "appliance_request_errors_total",
                 **{"class": "4xx"}) == 4
    hist = families["appliance_request_duration_seconds"]
    assert hist.type == "histogram"
    buckets = [s.value for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 40
    assert value("appliance_request_duration_seconds",
                 "appliance_request_duration_seconds_bucket", le="0.01") == 10
    assert value("appliance_request_duration_seconds", "appliance_request_duration_seconds_sum"
                 ) == pytest.approx(0.001 * 40 * 41 / 2)
    assert value("appliance_model_production_version",
                 "appliance_model_production_version", pipeline="machines") == 1
    assert value("appliance_drift_psi", "appliance_drift_psi", feature="temperature_c") > 0.2
    assert value("appliance_feature_drifted", "appliance_feature_drifted",
                 feature="rpm") == 0
    assert value("appliance_drift_detected", "appliance_drift_detected") == 1
    assert value("appliance_ingestions", "appliance_ingestions_total", status="accepted") == 1
    assert value("appliance_jobs", "appliance_jobs_total", status="succeeded") == 1
    assert value("appliance_job_duration_seconds", "appliance_job_duration_seconds_sum") > 0
    assert value("appliance_process_resident_memory_bytes",
                 "appliance_process_resident_memory_bytes") > 10e6
    assert 0 <= value("appliance_system_memory_used_ratio",
                      "appliance_system_memory_used_ratio") <= 1
    for name in families:
        assert name.startswith("appliance_")
    # Every family of a full exposition (requests, models, drift, ingestions, jobs,
    # resources) follows Prometheus' naming conventions, as its own parser reads them.
    assert naming_problems(generate_latest(registry).decode()) == []


def test_the_naming_check_catches_what_breaks_the_conventions():
    bad = "\n".join([
        "# TYPE appliance_latency_ms gauge", "appliance_latency_ms 3",
        "# TYPE appliance_requests_total gauge", "appliance_requests_total 3",
        "# TYPE appliance_memory gauge", "appliance_memory 3",
        "# TYPE appliance_cpu_percent gauge", "appliance_cpu_percent 3",
        "# TYPE other_thing counter", "other_thing_total 1", ""])
    problems = " ".join(naming_problems(bad))
    for word in ("appliance_latency_ms: a unit", "appliance_latency_ms: measures time",
                 "appliance_requests_total: _total on a gauge", "appliance_memory: measures a "
                 "size", "appliance_cpu_percent: a unit", "other_thing: not under"):
        assert word in problems, problems


# --- small data sets and the rolling window ------------------------------------------------


def ingest(services: Services, frame: pl.DataFrame, name: str) -> None:
    claimed = services.state.pipeline_dir(services.state.processing, "machines") / name
    frame.write_csv(claimed)
    services.ingester.process(claimed, "machines")


def test_a_slow_shift_over_small_files_is_seen_in_the_window(machines):
    services = machines("[pipelines.machines.retrain]\nmin_new_rows = 1000000\n")
    monitor = services.monitor
    base = pl.read_csv(SAMPLES / "machines_02.csv")
    sd = pl.read_csv(SAMPLES / "machines_01.csv").select(
        pl.col("temperature_c", "vibration_mm_s").std()).row(0, named=True)
    alone, windowed = [], []
    for i in range(16):  # 16 files of 60 rows, each shifted by 0.25 SD on two features
        part = base.slice(60 * i, 60).with_columns(
            pl.col("temperature_c") + 0.25 * sd["temperature_c"],
            pl.col("vibration_mm_s") + 0.25 * sd["vibration_mm_s"])
        ingest(services, part, f"{i}__small.csv")
        report = monitor.drift_checks.current("machines")
        assert report.source == "ingestion" and report.rows == 60
        assert report.method == "tests"
        window = monitor.drift_checks.current_window("machines")
        assert window is not None and window.source == "window"
        assert window.rows == 1000  # the newest rows: this file, those before, v1
        alone.append(drift_flagged(report))
        windowed.append(drift_flagged(window))
    # Each file alone is mostly too small to tell; the window sees the shift once it
    # holds enough of the new rows (half of it), and from then on; it flags nothing else.
    assert sum(bool(a) for a in alone) <= 2, alone
    assert all(w == {"temperature_c", "vibration_mm_s"} for w in windowed[8:]), windowed
    assert all(not w - {"temperature_c", "vibration_mm_s"} for w in windowed)
    assert window.drifted and window.importance_share > 0.3
    # The pipeline's summary (the overview's drift column) takes the window's headline.
    filled = monitor.fill_summary(PipelineSummary(
        name="machines", status="serving", task="binary", production_version=1,
        serving_version=1, primary_metric=None, primary_metric_value=None, datasets=17,
        rows=0, last_ingestion=None))
    assert filled.drift_status == "drift" and filled.drift_summary == window.summary
    detected = [e for e in events_of(services, "drift_detected")
                if e.details.get("source") == "window"]
    assert len(detected) == 1  # once, when the window started drifting
    history = monitor.drift_response("machines").history
    assert [h.source for h in history].count("window") == 16  # one after each file


def drift_flagged(report) -> set[str]:
    return {f.feature for f in report.features if f.drifted}
