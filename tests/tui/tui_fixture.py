"""A daemon that always says the same: fixed API answers, built from the api_types Structs
and served to the real client through httpx's MockTransport, for deterministic snapshots."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec

from appliance.api_types import (
    DriftFeature,
    DriftHistoryPoint,
    DriftReport,
    DriftResponse,
    ErrorBody,
    EventInfo,
    EventList,
    Explanation,
    FeatureContribution,
    FeatureSetInfo,
    FeatureSetList,
    Health,
    Identity,
    IngestionInfo,
    IngestionList,
    JobInfo,
    JobsResponse,
    LatestExplanation,
    MetricsWindow,
    ModelComparison,
    ModelInfo,
    ModelList,
    ModelScore,
    PipelineDetail,
    PipelineList,
    PipelineMetrics,
    PipelineSummary,
    PromoteResponse,
    ResourceSample,
    RetrainResponse,
    ScheduledJob,
    SystemResponse,
    identity_proof,
)
from appliance.monitoring import drift

NOW = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def iso(minutes_ago: float) -> str:
    ts = NOW - timedelta(minutes=minutes_ago)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


SCHEMA = {
    "reading_id": "String", "timestamp": "Datetime(time_unit='us', time_zone=None)",
    "machine_id": "String", "machine_type": "String", "site": "String",
    "temperature_c": "Float64", "vibration_mm_s": "Float64", "pressure_bar": "Float64",
    "rpm": "Int64", "humidity_pct": "Float64", "hours_since_service": "Float64",
    "failed_within_24h": "Int64",
}


def _metrics(auc: float) -> dict[str, float]:
    return {"auc": auc, "log_loss": round(0.4 - auc / 3, 4), "accuracy": 0.94,
            "f1": round(auc - 0.5, 4), "brier": 0.041}


def _lineage(trigger: str, sets: int) -> dict[str, Any]:
    rows = [3000, 1500, 1500][:sets]
    return {"trigger": trigger, "rows": sum(rows), "max_dataset_version": sets,
            "datasets": [{"version": i + 1, "rows": r, "sha256": "ab" * 32,
                          "ingestion_id": i + 1} for i, r in enumerate(rows)]}


V4_DECISION = (
    "vs production v3: auc 0.9021 vs 0.9004 (+0.0017 ± 0.0043, 0.4 SE): not better (needs a "
    "gain > 0 by 2 SE); vs the baseline 0.5000 (+0.4021 ± 0.0101, 39.8 SE): better (needs 2 "
    "SE); on its 1200 held-out rows (the newest). On v3's 1200 held-out rows: auc 0.9098 vs "
    "0.9120 (-0.0022 ± 0.0039, -0.6 SE): no significant loss (blocks beyond -2 SE)")

MODELS = [
    ModelInfo(version=4, stage="rejected", task="binary", metrics=_metrics(0.9021),
              lineage=_lineage("manual", 3), created_at=iso(3), promoted_at=None,
              decision=V4_DECISION),
    ModelInfo(version=3, stage="production", task="binary", metrics=_metrics(0.9120),
              lineage=_lineage("drift", 3), created_at=iso(12), promoted_at=iso(12),
              decision="vs v2: auc 0.9120 vs 0.8950: better (needs > 0)"),
    ModelInfo(version=2, stage="archived", task="binary", metrics=_metrics(0.8950),
              lineage=_lineage("new_data", 2), created_at=iso(40), promoted_at=iso(40),
              decision="vs v1: auc 0.8950 vs 0.8836: better (needs > 0)"),
    ModelInfo(version=1, stage="archived", task="binary", metrics=_metrics(0.8836),
              lineage=_lineage("new_data", 1), created_at=iso(70), promoted_at=iso(70),
              decision="vs baseline: auc 0.8836 vs 0.5000: better (needs > 0)"),
]

# The backtest: every version on v4's held-out rows (the newest), beside production v3.
COMPARISON = ModelComparison(
    metric="auc", rows_from_version=4, rows=1200, first_timestamp="2026-02-26 08:10:00",
    last_timestamp="2026-03-02 09:47:00", production_version=3,
    baseline={"auc": 0.5, "log_loss": 0.3012, "accuracy": 0.906, "f1": 0.0, "brier": 0.0851},
    computed_at=iso(2),
    scores=[
        ModelScore(version=4, stage="rejected", metrics=_metrics(0.9021), value=0.9021,
                   vs_production=0.0017, standard_error=0.0043),
        ModelScore(version=3, stage="production", metrics=_metrics(0.9004), value=0.9004),
        ModelScore(version=2, stage="archived", metrics=_metrics(0.8741), value=0.8741,
                   vs_production=-0.0263, standard_error=0.0064),
        ModelScore(version=1, stage="archived", metrics=_metrics(0.8612), value=0.8612,
                   vs_production=-0.0392, standard_error=0.0072),
    ])

REFUSED_REASON = (
    "column `failed_within_24h` not found in `machines_broken.csv`; the target column of "
    "pipeline `machines` is `failed_within_24h`. Name the right one with "
    "[pipelines.machines] target = \"...\" in appliance.toml"
)


def _ingestion(i: int, name: str, minutes: float, rows: int | None, status: str = "accepted",
               code: str | None = None, reason: str | None = None,
               version: int | None = None) -> IngestionInfo:
    return IngestionInfo(
        id=i, file_name=name, status=status, code=code, reason=reason, details={},
        warnings=[], rows=rows, columns=12 if rows else None, size_bytes=271_847,
        sha256="cd" * 32, dataset_version=version, received_at=iso(minutes),
        finished_at=iso(minutes - 0.01), duration_ms=133.4)


INGESTIONS = [
    _ingestion(4, "machines_03_drifted.csv", 13, 1500, version=3),
    _ingestion(3, "machines_broken.csv", 25, None, "rejected", "missing_target",
               REFUSED_REASON),
    _ingestion(2, "machines_02.csv", 41, 1500, version=2),
    _ingestion(1, "machines_01.csv", 71, 3000, version=1),
]

FEATURES = ["temperature_c", "vibration_mm_s", "humidity_pct", "pressure_bar", "rpm",
            "hours_since_service", "machine_type", "site", "machine_id"]
PSI = [1.412, 0.318, 0.265, 0.081, 0.044, 0.031, 0.012, 0.006, 0.003]
GAIN = [0.11, 0.25, 0.05, 0.03, 0.03, 0.48, 0.0, 0.01, 0.04]


def _drift() -> DriftResponse:
    features = [
        DriftFeature(feature=f, kind="categorical" if f in ("machine_type", "site",
                                                            "machine_id") else "numeric",
                     psi=p, threshold=0.2, drifted=p > 0.2, importance=g, severe=p > 1)
        for f, p, g in zip(FEATURES, PSI, GAIN, strict=True)
    ]
    latest = DriftReport(
        pipeline="machines", model_version=3, computed_at=iso(1), source="ingestion",
        rows=1500, drifted=True, drifted_share=3 / 9, features=features,
        prediction=DriftFeature(feature="prediction", kind="prediction", psi=0.15,
                                threshold=0.2, drifted=False),
        importance_share=0.41, severe=["temperature_c"], method="effect_sizes")
    latest.summary = drift.headline(latest)
    history = [
        DriftHistoryPoint(computed_at=iso(60 - 5 * i), source="predictions", model_version=3,
                          drifted=share >= 0.5, drifted_share=share,
                          psi={"temperature_c": share}, importance_share=gain)
        for i, (share, gain) in enumerate(zip(
            [0.0, 0.0, 0.11, 0.11, 0.22, 0.56, 0.67, 0.33, 0.33, 0.22, 0.33, 0.33],
            [0.0, 0.0, 0.05, 0.05, 0.16, 0.52, 0.64, 0.41, 0.41, 0.16, 0.41, 0.41],
            strict=True))
    ]
    return DriftResponse(pipeline="machines", latest=latest, history=history,
                         status="drift", summary=latest.summary)


def _metrics_windows() -> PipelineMetrics:
    start = NOW.timestamp() - 30 * 60
    windows = []
    for i in range(180):  # 30 minutes of 10 s windows
        t = start + 10 * i
        wave = math.sin(i / 9)
        requests = 40 + int(12 * wave) + (30 if 120 <= i < 130 else 0)
        windows.append(MetricsWindow(
            start=t, seconds=10, requests=requests, rows=requests * 3,
            errors_4xx=1 if i % 37 == 0 else 0, errors_5xx=0,
            p50_ms=round(1.8 + 0.3 * wave, 2), p95_ms=round(3.9 + 0.8 * wave, 2),
            p99_ms=round(6.4 + 2.5 * wave + (8 if 120 <= i < 130 else 0), 2)))
    return PipelineMetrics(pipeline="machines", windows=windows)


def _explanation() -> LatestExplanation:
    """The newest sampled prediction of v3, explained: joined and derived features too."""
    contributions = [
        FeatureContribution(feature="vibration_mm_s", contribution=1.912, value=4.81),
        FeatureContribution(feature="hours_since_service", contribution=0.874, value=1204.5),
        FeatureContribution(feature="rpm_load", contribution=-0.412, value=0.9312,
                            source="derived"),
        FeatureContribution(feature="install_year", contribution=0.233, value=2016,
                            source="joined", feature_set="machine_info"),
        FeatureContribution(feature="site", contribution=-0.104, value="south"),
    ]
    base, others = -3.696, 0.052
    raw = base + sum(c.contribution for c in contributions) + others
    return LatestExplanation(
        pipeline="machines", model_version=3, prediction_id="5ae4e1aad43000000a1f",
        ts=iso(0.5), prediction=1 / (1 + math.exp(-raw)),
        explanations=[Explanation(raw_score=raw, base_value=base,
                                  contributions=contributions, others=others)])


def _system() -> SystemResponse:
    samples = []
    for i in range(120):
        t = NOW.timestamp() - 5 * (119 - i)
        samples.append(ResourceSample(
            ts=t, process_cpu_percent=6 + 4 * math.sin(i / 7), process_rss_bytes=212 * 2**20,
            process_threads=14, process_open_files=9,
            cpu_percent=round(22 + 15 * math.sin(i / 6) + (30 if 80 <= i < 90 else 0), 1),
            memory_available_bytes=9 * 2**30, memory_percent=round(61 + 3 * math.sin(i / 20), 1),
            load_1m=0.42, disk_free_bytes=38 * 2**30 + 200 * 2**20))
    return SystemResponse(samples=samples)


PIPELINES = [
    PipelineSummary(name="machines", status="serving", task="binary", production_version=3,
                    serving_version=3, primary_metric="auc", primary_metric_value=0.9120,
                    datasets=3, rows=6000, last_ingestion=iso(13), requests_per_s=4.2,
                    p50_ms=1.8, p99_ms=6.4, error_rate=0.002, drift_status="drift",
                    drift_share=3 / 9, drift_importance_share=0.41),
    PipelineSummary(name="energy", status="training", task="regression", production_version=1,
                    serving_version=1, primary_metric="rmse", primary_metric_value=3.217,
                    datasets=1, rows=800, last_ingestion=iso(0.2), requests_per_s=0.5,
                    p50_ms=1.1, p99_ms=2.9, error_rate=0.0, drift_status="drift",
                    drift_share=0.5),
    PipelineSummary(name="vision", status="waiting_for_data", task=None,
                    production_version=None, serving_version=None, primary_metric=None,
                    primary_metric_value=None, datasets=0, rows=0, last_ingestion=None),
]

DETAIL = PipelineDetail(
    name="machines", status="serving", task="binary", target="failed_within_24h",
    timestamp="timestamp", id="reading_id", schema=SCHEMA, production=MODELS[1],
    serving_version=3, datasets=3, rows=6000, models=4,
    ingestions={"accepted": 3, "rejected": 1})

EVENTS = [
    EventInfo(id=i + 1, ts=iso(m), kind=k, level=lvl, pipeline=p, message=msg, details={})
    for i, (m, k, lvl, p, msg) in enumerate([
        (72, "started", "info", None, "serving on http://127.0.0.1:8080"),
        (71, "ingested", "info", "machines", "machines_01.csv: 3000 rows as data set v1"),
        (70, "trained", "info", "machines", "v1 trained on 3000 rows in 0.4s"),
        (70, "promoted", "info", "machines", "v1 is production: vs baseline: auc 0.8836 vs "
                                            "0.5000: better (needs > 0)"),
        (41, "ingested", "info", "machines", "machines_02.csv: 1500 rows as data set v2"),
        (40, "promoted", "info", "machines", "v2 is production: vs v1: auc 0.8950 vs 0.8836: "
                                            "better (needs > 0)"),
        (25, "refused", "warning", "machines", "machines_broken.csv: " + REFUSED_REASON),
        (13, "ingested", "info", "machines", "machines_03_drifted.csv: 1500 rows as data set "
                                            "v3"),
        (12.5, "drift_detected", "warning", "machines", "5 of 9 features drifted (PSI "
                                                         "temperature_c 0.41)"),
        (12, "promoted", "info", "machines", "v3 is production: vs v2: auc 0.9120 vs 0.8950: "
                                            "better (needs > 0)"),
        (3, "not_promoted", "info", "machines", "v4: vs v3: auc 0.9021 vs 0.9120: not better "
                                               "(needs > 0)"),
        (0.2, "training_started", "info", "energy", "training (new_data)"),
    ])
]

JOBS = JobsResponse(
    pipeline="machines",
    scheduled=[ScheduledJob(id="retrain-machines", pipeline="machines",
                            name="retrain machines", schedule="cron 0 3 * * *",
                            next_run=(NOW + timedelta(hours=17)).isoformat()),
               ScheduledJob(id="drift-machines", pipeline="machines", name="drift check",
                            schedule="every 60s", next_run=(NOW + timedelta(seconds=40))
                            .isoformat())],
    history=[
        JobInfo(id=5, pipeline="machines", kind="train", trigger="manual", status="succeeded",
                started_at=iso(3.1), finished_at=iso(3), model_version=4, error=None),
        JobInfo(id=4, pipeline="machines", kind="train", trigger="drift", status="succeeded",
                started_at=iso(12.1), finished_at=iso(12), model_version=3, error=None),
        JobInfo(id=3, pipeline="machines", kind="train", trigger="manual", status="failed",
                started_at=iso(30), finished_at=iso(29.9), model_version=None,
                error="MemoryError: training needed more memory than MemoryMax allows"),
        JobInfo(id=2, pipeline="machines", kind="train", trigger="new_data",
                status="succeeded", started_at=iso(40.1), finished_at=iso(40),
                model_version=2, error=None),
        JobInfo(id=1, pipeline="machines", kind="train", trigger="new_data",
                status="succeeded", started_at=iso(70.1), finished_at=iso(70),
                model_version=1, error=None),
    ])


FEATURE_SETS = FeatureSetList(feature_sets=[
    FeatureSetInfo(name="machine_info", key="machine_id", timestamp="updated_at",
                   schema={"machine_id": "String", "updated_at": "Datetime(time_unit='us')",
                           "rated_current": "Float64", "vendor": "String"},
                   datasets=2, rows=60, keys=40, updated_at=iso(2), newest_event=iso(60 * 26),
                   last_ingestion=iso(2), used_by=["machines"]),
    FeatureSetInfo(name="site_weather", key="site", timestamp=None, schema=None, datasets=0,
                   rows=0, keys=0, updated_at=None, newest_event=None, last_ingestion=None,
                   used_by=["energy", "machines"]),
    FeatureSetInfo(name="tariffs", key="site", timestamp=None, schema={"site": "String"},
                   datasets=1, rows=3, keys=3, updated_at=iso(300), newest_event=None,
                   last_ingestion=iso(300), used_by=["energy"]),
])


HELD_REASON = (
    "suspect labels: v3 auc 0.0820 ± 0.0150 on 1,500 rows vs 0.9120 at validation and "
    "0.5000 for the trivial baseline: worse than the baseline by 0.4180 ± 0.0150, 27.9 "
    "standard errors; below the tolerated 0.7060 (validation less 0.5 of its edge over the "
    "baseline), 15.8 standard errors: suspect (more than 3.09 standard errors)"
)


def with_held(table: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """The same daemon after a file with inverted labels arrived and was held."""
    held = IngestionInfo(
        id=5, file_name="machines_04_export.csv", status="accepted", code=None, reason=None,
        details={}, warnings=[], rows=1500, columns=12, size_bytes=271_847, sha256="ef" * 32,
        dataset_version=4, received_at=iso(1), finished_at=iso(0.99), duration_ms=120.2,
        dataset_status="held", dataset_status_reason=HELD_REASON)
    table[("GET", "/v1/pipelines/machines/ingestions")] = IngestionList(
        pipeline="machines", ingestions=[held, *INGESTIONS])
    table[("GET", "/v1/pipelines/machines")] = msgspec.structs.replace(
        DETAIL, datasets=4, rows=7500, held=[4], ingestions={"accepted": 4, "rejected": 1})
    return table


def routes() -> dict[tuple[str, str], Any]:
    return {
        ("GET", "/health"): Health(status="ok", version="0.1.0"),
        ("GET", "/v1/pipelines"): PipelineList(pipelines=PIPELINES),
        ("GET", "/v1/pipelines/machines"): DETAIL,
        ("GET", "/v1/pipelines/machines/models"): ModelList(pipeline="machines",
                                                            models=MODELS,
                                                            comparison=COMPARISON),
        ("GET", "/v1/pipelines/machines/ingestions"): IngestionList(pipeline="machines",
                                                                    ingestions=INGESTIONS),
        ("GET", "/v1/pipelines/machines/jobs"): JOBS,
        ("GET", "/v1/pipelines/machines/drift"): _drift(),
        ("GET", "/v1/pipelines/machines/metrics"): _metrics_windows(),
        ("GET", "/v1/pipelines/machines/explanations/latest"): _explanation(),
        ("GET", "/v1/system"): _system(),
        ("GET", "/v1/feature-sets"): FEATURE_SETS,
        ("POST", "/v1/pipelines/machines/models/2/promote"): PromoteResponse(
            pipeline="machines", version=2, previous_version=3),
        ("POST", "/v1/pipelines/machines/retrain"): RetrainResponse(
            pipeline="machines", started=True, message="training started"),
    }


def transport(missing: frozenset[str] = frozenset(), held: bool = False
              ) -> httpx.MockTransport:
    """Fixed answers; paths in ``missing`` answer 404 as a daemon without that route does;
    ``held``: a file held for suspect labels besides."""
    table = with_held(routes()) if held else routes()

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        key = (request.method, path)
        if key == ("GET", "/v1/identity"):  # the fake daemon holds the fixture's token
            challenge = request.url.params["challenge"]
            answer = Identity(port=80, proofs=[identity_proof("t0ken", challenge, 80)])
            return httpx.Response(200, content=msgspec.json.encode(answer),
                                  headers={"content-type": "application/json"})
        if path in missing or key not in table:
            body = ErrorBody(code="not_found", message="Not Found")
            return httpx.Response(404, content=msgspec.json.encode(body),
                                  headers={"content-type": "application/json"})
        if path == "/v1/events" and int(request.url.params.get("after", 0)) > 0:
            answer: Any = EventList(events=[])
        else:
            answer = table[key]
        return httpx.Response(200, content=msgspec.json.encode(answer),
                              headers={"content-type": "application/json"})

    table[("GET", "/v1/events")] = EventList(events=list(reversed(EVENTS)))
    return httpx.MockTransport(handle)


def fixture_app(missing: frozenset[str] = frozenset(), held: bool = False, **kw: Any) -> Any:
    from tui.app import make_app

    return make_app("http://appliance.test", "t0ken", transport=transport(missing, held),
                    clock=clock, refresh_seconds=3600, **kw)


AppFactory = Callable[..., Any]
