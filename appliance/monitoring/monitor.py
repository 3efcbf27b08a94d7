"""Monitoring: what the service does (requests, latency, errors, resources) and what the data
does (drift, live performance), kept in SQLite within a bounded size and exported to
Prometheus.

The request path pays one short critical section per request (:meth:`RequestMetrics.record`):
counters of the pipeline's current window and of its running totals. Everything else runs
in jobs, each behind one method the daemon calls on a timer and a test calls directly:

- :meth:`Monitor.flush_windows` writes closed windows to SQLite, one transaction per flush;
- :meth:`Monitor.sample_resources` samples the process and the box with psutil;
- :meth:`Monitor.apply_retention` removes what is older than the retention settings;
- :meth:`Monitor.drift_check` compares the sampled prediction inputs of a recent window
  with the production model's reference; :meth:`Monitor.on_ingested` does the same for each
  newly ingested data set;
- :meth:`Monitor.performance_check` joins feedback to the prediction log and scores it.

Prometheus reads the in-memory state at scrape time through :class:`MonitorCollector`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import psutil
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from appliance import __version__
from appliance.api_types import (
    DriftHistoryPoint,
    DriftReport,
    DriftResponse,
    LivePerformancePoint,
    PipelineMetrics,
    PipelineSummary,
    ResourceSample,
    SystemResponse,
)
from appliance.core import ApplianceError, Settings
from appliance.features import profile, to_matrix
from appliance.models import LiveModels, LoadedModel
from appliance.models import metrics as m
from appliance.monitoring import drift
from appliance.monitoring.requests import (
    LATENCY_BOUNDS,
    ASGIApp,
    RequestMetrics,
    instrument,
    merge_records,
    metrics_window,
    percentile,
)
from appliance.store import (
    DriftRecord,
    Events,
    IngestionRecord,
    LivePerformanceRecord,
    ResourceRecord,
    Store,
    WindowRecord,
)

log = logging.getLogger("appliance.monitor")

# The subset Prometheus gets (cumulative counts at these bounds are exact).
PROMETHEUS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
_PROM_INDEX = [LATENCY_BOUNDS.index(b) for b in PROMETHEUS_BOUNDS]

RAW_VIEW_MAX_SECONDS = 6 * 3600  # longer ranges are answered from hourly roll-ups
DRIFT_MAX_ROWS = 10_000  # sampled inputs read for one drift check
DRIFT_PREDICT_ROWS = 100_000  # rows of a new data set the model predicts for prediction drift
MiB = 1024 * 1024


# --- the monitor ------------------------------------------------------------------------


@dataclass
class _Alarm:
    """An on/off condition that raises its event only when it turns on."""
    on: bool = False

    def update(self, now_on: bool) -> bool:
        turned_on = now_on and not self.on
        self.on = now_on
        return turned_on

    def below(self, value: float, floor: float) -> bool:
        """``value`` is under ``floor``; once on, the alarm clears only 10% above it
        (hysteresis, so it doesn't flap)."""
        return value < floor or (self.on and value < floor * 1.1)


@dataclass
class Monitor:
    store: Store
    settings: Settings
    events: Events
    live: LiveModels
    state_root: Path
    clock: Callable[[], float] = time.time
    training_busy: Callable[[str], bool] | None = None
    on_drift: Callable[[str, DriftReport], None] | None = None
    requests: RequestMetrics = field(init=False)
    latest_resources: ResourceRecord | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg = self.settings.monitor
        self.requests = RequestMetrics(cfg.window_seconds, self.clock)
        self._known: frozenset[str] = frozenset(self.settings.pipelines)
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # the first reading primes the counters
        psutil.cpu_percent(None)
        self._temperatures = hasattr(psutil, "sensors_temperatures")
        self._disk_alarm = _Alarm()
        self._memory_alarm = _Alarm()
        self._drift_alarm: dict[str, _Alarm] = {}
        self._performance_alarm: dict[str, _Alarm] = {}
        self._drift_seen: dict[str, tuple[float, int]] = {}
        self._latest_drift: dict[str, DriftReport] = {}
        self._latest_performance: dict[str, LivePerformanceRecord] = {}
        self._meta_cache: dict[tuple[str, int], dict[str, Any]] = {}
        self._drift_lock = threading.Lock()
        self._performance_lock = threading.Lock()  # the ingest and checks threads both score
        self.refresh_known()
        for name in self._known:
            latest = self.store.drift_reports(name, limit=1)
            if latest:
                report = msgspec.convert(latest[0].report, DriftReport)
                self._latest_drift[name] = report
                self._drift_alarm[name] = _Alarm(drift.alarm(report))

    # --- the request path ----------------------------------------------------------------

    def refresh_known(self) -> None:
        """The pipelines whose requests are counted: configured or seen by the store."""
        names = {p.name for p in self.store.pipelines()} | set(self.settings.pipelines)
        self._known = frozenset(names)

    def is_known(self, name: str) -> bool:
        return name in self._known or self.live.get(name) is not None

    def instrument(self, app: ASGIApp) -> ASGIApp:
        """The HTTP app, with predict calls counted (see :func:`instrument`)."""
        return instrument(app, self.requests, self.is_known)

    # --- jobs ----------------------------------------------------------------------------

    def flush_windows(self, force: bool = False) -> int:
        """Write the closed windows to SQLite in one transaction; returns how many."""
        windows = self.requests.take_closed(force=force)
        if not windows:
            return 0
        try:
            self.store.write_windows(windows)
        except Exception:
            self.requests.give_back(windows)
            raise
        return len(windows)

    def sample_resources(self) -> ResourceRecord:
        """Sample the process and the box, store it, and raise pressure events."""
        p = self._proc
        with p.oneshot():
            cpu = p.cpu_percent(None)
            rss = p.memory_info().rss
            threads = p.num_threads()
            fds = p.num_fds() if hasattr(p, "num_fds") else len(p.open_files())
        vm = psutil.virtual_memory()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        disk = psutil.disk_usage(str(self.state_root)).free
        sample = ResourceRecord(
            seconds=self.settings.monitor.resource_interval_seconds, ts=self.clock(),
            process_cpu_percent=cpu, process_rss_bytes=rss, process_threads=threads,
            process_open_files=fds, cpu_percent=psutil.cpu_percent(None),
            memory_available_bytes=vm.available, memory_percent=vm.percent, load_1m=load,
            disk_free_bytes=disk, temperature_c=self._temperature(),
        )
        self.store.add_resource_sample(sample)
        self.latest_resources = sample
        self._pressure(sample)
        self.refresh_known()
        return sample

    def _temperature(self) -> float | None:
        """The hottest sensor the box reports, or None when it reports none."""
        if not self._temperatures:
            return None
        try:
            sensors = psutil.sensors_temperatures()
        except Exception:
            sensors = {}
        readings = [t.current for entries in sensors.values() for t in entries
                    if t.current is not None and -50 < t.current < 200]
        if not sensors:
            self._temperatures = False  # none now, none later: stop asking
        return max(readings) if readings else None

    def _pressure(self, s: ResourceRecord) -> None:
        cfg = self.settings.monitor
        disk_min = cfg.min_free_disk_mb * MiB
        if self._disk_alarm.update(self._disk_alarm.below(s.disk_free_bytes, disk_min)):
            self.events.emit(
                "disk_pressure",
                f"{s.disk_free_bytes / MiB:.0f} MB free on the state directory's disk, under "
                f"{cfg.min_free_disk_mb} MB (monitor.min_free_disk_mb); free space or lower "
                "monitor.predictions_max_rows", level="warning",
                free_bytes=s.disk_free_bytes, path=str(self.state_root),
            )
        mem_min = cfg.min_available_memory_mb * MiB
        if self._memory_alarm.update(self._memory_alarm.below(s.memory_available_bytes,
                                                              mem_min)):
            self.events.emit(
                "memory_pressure",
                f"{s.memory_available_bytes / MiB:.0f} MB of memory available, under "
                f"{cfg.min_available_memory_mb} MB (monitor.min_available_memory_mb); this "
                f"process uses {s.process_rss_bytes / MiB:.0f} MB", level="warning",
                available_bytes=s.memory_available_bytes, rss_bytes=s.process_rss_bytes,
            )

    def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Remove what is older than the retention settings; returns rows removed per kind.
        Deletes run in small transactions so serving never waits long on the store."""
        now = self.clock() if now is None else now
        cfg = self.settings.monitor
        raw_before = now - cfg.raw_retention_hours * 3600
        rollup_before = now - cfg.rollup_retention_days * 86400
        predictions_before = now - cfg.predictions_max_age_days * 86400
        store = self.store

        def drain(fn: Callable[[], int]) -> int:
            total = 0
            while True:
                n = fn()
                total += n
                if n < 5000:
                    return total

        removed = {
            "raw_windows": drain(lambda: store.delete_windows_before(raw_before, False)),
            "hourly_windows": drain(lambda: store.delete_windows_before(rollup_before, True)),
            "raw_resources": drain(
                lambda: store.delete_resource_samples_before(raw_before, False)),
            "hourly_resources": drain(
                lambda: store.delete_resource_samples_before(rollup_before, True)),
            "drift_reports": drain(lambda: store.delete_drift_reports_before(rollup_before)),
            "live_performance": drain(
                lambda: store.delete_live_performance_before(rollup_before)),
            "feedback": drain(lambda: store.delete_feedback_before(predictions_before)),
            "predictions": 0,
        }
        for pipeline in store.prediction_pipelines():
            removed["predictions"] += drain(
                lambda p=pipeline: store.delete_predictions_before(p, predictions_before))
            cutoff = store.prediction_cutoff(pipeline, cfg.predictions_max_rows)
            if cutoff is not None:
                removed["predictions"] += drain(
                    lambda p=pipeline, c=cutoff: store.delete_predictions_before(
                        p, c, inclusive=True))
        if any(removed.values()):
            log.info("retention %s", " ".join(f"{k}={v}" for k, v in removed.items() if v))
        return removed

    # --- drift ---------------------------------------------------------------------------

    def drift_check_all(self) -> None:
        for name in sorted(self._known | set(self.live.versions())):
            try:
                self.drift_check(name)
            except Exception:
                log.exception("drift_check_failed pipeline=%s", name)

    def drift_check(self, pipeline: str, force: bool = False) -> DriftReport | None:
        """Compare the sampled prediction inputs of the last ``drift.window_seconds`` with
        the production model's reference. None when there is no model, no reference, too
        few samples, or nothing new since the last check (unless ``force``)."""
        model = self.live.get(pipeline)
        reference = model.meta.get("reference") if model else None
        if model is None or not reference:
            return None
        cfg = self.settings.drift
        logged = self.store.prediction_inputs(pipeline, self.clock() - cfg.window_seconds,
                                              limit=DRIFT_MAX_ROWS)
        if len(logged) < cfg.min_rows:
            return None
        seen = (logged[0][0], model.version)
        if not force and self._drift_seen.get(pipeline) == seen:
            return None
        self._drift_seen[pipeline] = seen
        frame = rows_frame([row for _, _, row, _ in logged], model)
        outputs = [out for _, version, _, out in logged if version == model.version]
        predictions = (logged_predictions(outputs, model.spec.task)
                       if len(outputs) >= cfg.min_rows else None)
        return self._report(pipeline, model, reference, frame, predictions, "predictions")

    def on_ingested(self, pipeline: str, record: IngestionRecord) -> DriftReport | None:
        """The hook after a file is accepted: drift of the new data set against the
        production model (the report, or None when not checked), then live performance
        (the file may have been feedback). Never raises: monitoring must not fail an
        ingestion."""
        report = None
        try:
            if record.dataset_path:
                frame = pl.read_parquet(self.state_root / record.dataset_path)
                report = self.drift_check_frame(pipeline, frame, source="ingestion")
        except Exception:
            log.exception("drift_check_failed pipeline=%s ingestion=%s", pipeline, record.id)
        try:
            self.performance_check(pipeline)
        except Exception:
            log.exception("performance_check_failed pipeline=%s", pipeline)
        return report

    def drift_check_frame(self, pipeline: str, frame: pl.DataFrame,
                          source: str = "ingestion") -> DriftReport | None:
        """Drift of a data set (raw columns, as ingested) against the production model."""
        model = self.live.get(pipeline)
        reference = model.meta.get("reference") if model else None
        if model is None or not reference:
            return None
        if frame.height < self.settings.drift.min_rows:
            log.info("drift_skipped pipeline=%s rows=%d min_rows=%d", pipeline, frame.height,
                     self.settings.drift.min_rows)
            return None
        predictions = None
        sample = frame
        if frame.height > DRIFT_PREDICT_ROWS:
            sample = frame.sample(DRIFT_PREDICT_ROWS, seed=0)
        try:
            raw = model.predict_matrix(to_matrix(sample, model.spec))
            predictions = profile.prediction_values(model.spec.task, raw, model.spec.classes)
        except ApplianceError:
            predictions = None  # the data lacks features: feature drift only
        return self._report(pipeline, model, reference, frame, predictions, source)

    def _report(self, pipeline: str, model: LoadedModel, reference: dict[str, Any],
                frame: pl.DataFrame, predictions: Any, source: str) -> DriftReport:
        report = drift.evaluate(reference, frame, self.settings.drift, pipeline=pipeline,
                                model_version=model.version, source=source,
                                predictions=predictions)
        self.store.add_drift_report(
            pipeline=pipeline, ts=self.clock(), source=source,
            model_version=model.version, rows=report.rows, drifted=report.drifted,
            drifted_share=report.drifted_share, report=msgspec.to_builtins(report),
        )
        with self._drift_lock:
            self._latest_drift[pipeline] = report
            alarm = self._drift_alarm.setdefault(pipeline, _Alarm())
            turned_on = alarm.update(drift.alarm(report))
        # A new data set that drifts is news every time; sampled traffic only when it
        # starts drifting.
        if drift.alarm(report) and (turned_on or source == "ingestion"):
            self._emit_drift(report)
        return report

    def _emit_drift(self, report: DriftReport) -> None:
        names = [f.feature for f in report.features if f.drifted]
        what = (f"{len(names)} of {len(report.features)} features drifted"
                + (f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                   if names else ""))
        if report.prediction and report.prediction.drifted:
            what += "; the predictions drifted"
        source = ("a new data set" if report.source == "ingestion"
                  else "recent prediction inputs")
        self.events.emit(
            "drift_detected", f"{what}, in {source} ({report.rows} rows) vs the reference of "
            f"v{report.model_version}", pipeline=report.pipeline, level="warning",
            source=report.source, features=names, drifted_share=report.drifted_share,
            prediction_drifted=bool(report.prediction and report.prediction.drifted),
            version=report.model_version,
        )
        if self.on_drift is not None and report.source == "predictions":
            try:
                self.on_drift(report.pipeline, report)
            except Exception:
                log.exception("on_drift_failed pipeline=%s", report.pipeline)

    def drift_response(self, pipeline: str, limit: int = 100) -> DriftResponse:
        records = self.store.drift_reports(pipeline, limit=limit)
        latest = msgspec.convert(records[0].report, DriftReport) if records else None
        return DriftResponse(pipeline=pipeline, latest=latest,
                             history=[_history_point(r) for r in reversed(records)])

    # --- live performance ----------------------------------------------------------------

    def performance_check_all(self) -> None:
        for name in sorted(self._known):
            try:
                self.performance_check(name)
            except Exception:
                log.exception("performance_check_failed pipeline=%s", name)

    def performance_check(self, pipeline: str) -> list[LivePerformanceRecord]:
        """Join feedback to the prediction log and score each window of prediction times
        with the model's primary metric; raise ``performance_degraded`` when the newest
        scored window of the production model is worse than its validation metric by
        more than ``monitor.performance_tolerance`` (a share of that metric)."""
        with self._performance_lock:
            return self._performance_check(pipeline)

    def _performance_check(self, pipeline: str) -> list[LivePerformanceRecord]:
        cfg = self.settings.monitor
        now = self.clock()
        joined = self.store.feedback_joined(pipeline, now - cfg.predictions_max_age_days * 86400)
        if not joined:
            return []
        width = cfg.performance_window_seconds
        groups: dict[tuple[int, float], list[tuple[Any, Any]]] = {}
        for _, ts, version, output, outcome in joined:
            groups.setdefault((version, ts - ts % width), []).append((output, outcome))
        points = []
        for (version, start), pairs in sorted(groups.items(), key=lambda kv: kv[0][1]):
            if len(pairs) < cfg.performance_min_labelled:
                continue
            scored = self._score(pipeline, version, pairs)
            if scored is None:
                continue
            metric, value, labelled, validation = scored
            points.append(LivePerformanceRecord(
                pipeline=pipeline, model_version=version, seconds=width, start=start,
                metric=metric, value=value, labelled=labelled, validation_value=validation,
                computed_at=now,
            ))
        self.store.upsert_live_performance(points)
        production = self.store.production_model(pipeline)
        newest = [p for p in points if production and p.model_version == production.version]
        if newest:
            self._judge(pipeline, newest[-1])
        return points

    def _model_meta(self, pipeline: str, version: int) -> dict[str, Any] | None:
        live = self.live.get(pipeline)
        if live is not None and live.version == version:
            return live.meta
        key = (pipeline, version)
        if key not in self._meta_cache:
            record = self.store.model(pipeline, version)
            if record is None:
                return None
            try:
                self._meta_cache[key] = json.loads(
                    (self.state_root / record.path / "model.json").read_bytes())
            except (OSError, ValueError):
                return None
        return self._meta_cache[key]

    def _score(self, pipeline: str, version: int,
               pairs: list[tuple[Any, Any]]) -> tuple[str, float, int, float | None] | None:
        meta = self._model_meta(pipeline, version)
        if meta is None:
            return None
        task = meta["task"]
        classes = meta["spec"].get("classes")
        scored = score_pairs(task, classes, pairs)
        if scored is None:
            return None
        y, p = scored
        metric = m.PRIMARY[task][0]
        value = m.evaluate(task, y, p)[metric]
        if not math.isfinite(value):
            return None  # e.g. AUC of a window with one class only
        validation = meta.get("metrics", {}).get(metric)
        return metric, float(value), len(y), validation

    def _judge(self, pipeline: str, point: LivePerformanceRecord) -> None:
        self._latest_performance[pipeline] = point
        if point.validation_value is None:
            return
        higher = _higher_is_better(point.metric)
        tolerance = self.settings.monitor.performance_tolerance * abs(point.validation_value)
        worse = (point.validation_value - point.value if higher
                 else point.value - point.validation_value)
        alarm = self._performance_alarm.setdefault(pipeline, _Alarm())
        if alarm.update(worse > tolerance):
            self.events.emit(
                "performance_degraded",
                f"live {point.metric} {point.value:.4f} on {point.labelled} labelled "
                f"predictions vs {point.validation_value:.4f} at validation (v"
                f"{point.model_version}); beyond the tolerance of "
                f"{self.settings.monitor.performance_tolerance:g} (monitor.performance_tolerance)",
                pipeline=pipeline, level="warning", metric=point.metric, value=point.value,
                validation_value=point.validation_value, labelled=point.labelled,
                version=point.model_version, window_start=point.start,
            )

    # --- reads for the API ---------------------------------------------------------------

    def pipeline_metrics(self, pipeline: str, seconds: float = 3600.0,
                         resolution: str = "auto") -> PipelineMetrics:
        now = self.clock()
        since = now - seconds
        hourly = resolution == "hourly" or (
            resolution == "auto" and seconds > RAW_VIEW_MAX_SECONDS)
        if hourly:
            records = self.store.windows(pipeline, since - since % 3600, rollups=True)
        else:
            since_w = since - since % self.requests.window
            stored = self.store.windows(pipeline, since_w)
            merged: dict[float, WindowRecord] = {w.start: w for w in stored}
            for w in self.requests.pending(pipeline):
                if w.start >= since_w:
                    merged[w.start] = merge_records(merged.get(w.start), w)
            records = [merged[k] for k in sorted(merged)]
        perf = self.store.live_performance(pipeline, since - self.settings.monitor
                                           .performance_window_seconds)
        return PipelineMetrics(
            pipeline=pipeline, windows=[metrics_window(w) for w in records],
            live_performance=[
                LivePerformancePoint(start=p.start, seconds=p.seconds, metric=p.metric,
                                     value=p.value, labelled=p.labelled,
                                     validation_value=p.validation_value)
                for p in perf
            ],
        )

    def system(self, seconds: float = 3600.0, resolution: str = "auto") -> SystemResponse:
        now = self.clock()
        hourly = resolution == "hourly" or (
            resolution == "auto" and seconds > RAW_VIEW_MAX_SECONDS)
        since = now - seconds
        if hourly:
            since -= since % 3600
        records = self.store.resource_samples(since, rollups=hourly)
        return SystemResponse(samples=[
            ResourceSample(**{f: getattr(r, f) for f in _SAMPLE_FIELDS}) for r in records
        ])

    def fill_summary(self, summary: PipelineSummary) -> PipelineSummary:
        """The monitoring fields of a pipeline's summary: the last minute of traffic and
        the latest drift check."""
        counts, span = self.requests.last(summary.name, 60.0)
        summary.requests_per_s = round(counts.requests / span, 3) if span else 0.0
        if counts.requests:
            p50 = percentile(counts.buckets, 0.5)
            p99 = percentile(counts.buckets, 0.99)
            summary.p50_ms = round(p50 * 1000, 3) if p50 is not None else None
            summary.p99_ms = round(p99 * 1000, 3) if p99 is not None else None
            summary.error_rate = round((counts.errors_4xx + counts.errors_5xx)
                                       / counts.requests, 6)
        report = self.current_drift(summary.name)
        if report is not None:
            summary.drift_status = "drift" if drift.alarm(report) else "ok"
        return summary

    def current_drift(self, pipeline: str) -> DriftReport | None:
        """The latest drift report about the model being served; None when that model has
        not been checked yet (a report about the model it replaced is history)."""
        with self._drift_lock:
            report = self._latest_drift.get(pipeline)
        live = self.live.get(pipeline)
        if report is None or live is None or report.model_version != live.version:
            return None
        return report

    def collector(self, extra: Callable[[], Iterable[Metric]] | None = None) -> MonitorCollector:
        return MonitorCollector(self, extra)


_SAMPLE_FIELDS = tuple(ResourceSample.__struct_fields__)


def _higher_is_better(metric: str) -> bool:
    return metric in ("auc", "accuracy", "f1", "macro_f1", "r2")


def _history_point(r: DriftRecord) -> DriftHistoryPoint:
    features = r.report.get("features", [])
    return DriftHistoryPoint(
        computed_at=r.report.get("computed_at", ""), source=r.source,
        model_version=r.model_version, drifted=r.drifted, drifted_share=r.drifted_share,
        psi={f["feature"]: f["psi"] for f in features if f.get("psi") is not None},
    )


# --- converting logged rows -------------------------------------------------------------


def rows_frame(rows: list[dict[str, Any]], model: LoadedModel) -> pl.DataFrame:
    """Logged request rows (JSON objects) as a frame of the model's raw feature columns."""
    columns = {}
    for f in model.spec.features:
        values = [r.get(f.name) if isinstance(r, dict) else None for r in rows]
        if f.kind in profile.NUMERIC_KINDS:
            columns[f.name] = pl.Series(f.name, values, dtype=pl.Float64, strict=False)
        elif f.kind == "categorical":
            columns[f.name] = pl.Series(
                f.name, [v if isinstance(v, str) else None for v in values], dtype=pl.String)
    return pl.DataFrame(columns)


def logged_predictions(outputs: list[Any], task: str) -> Any:
    """Logged outputs as drift compares them: floats, or the class (as text) when
    multiclass."""
    if task == "multiclass":
        return pl.Series("prediction", [str(o.get("class")) if isinstance(o, dict) else None
                                        for o in outputs], dtype=pl.String)
    return np.array([float(o) if isinstance(o, (int, float)) else np.nan for o in outputs],
                    dtype=np.float64)


def _label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def score_pairs(task: str, classes: list[Any] | None,
                pairs: list[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, p) for metrics.evaluate from (logged output, true outcome) pairs; outcomes that
    match no class, and outputs of the wrong shape, are left out."""
    ys: list[float] = []
    ps: list[Any] = []
    if task == "regression":
        for out, outcome in pairs:
            try:
                y, p = float(outcome), float(out)
            except (TypeError, ValueError):
                continue
            if math.isfinite(y) and math.isfinite(p):
                ys.append(y)
                ps.append(p)
        return (np.array(ys), np.array(ps)) if ys else None
    codes = {_label_key(c): i for i, c in enumerate(classes or [])}
    labels = [str(c) for c in classes or []]
    for out, outcome in pairs:
        code = codes.get(_label_key(outcome))
        if code is None:
            continue
        if task == "binary":
            if not isinstance(out, (int, float)):
                continue
            ps.append(float(out))
        else:
            probs = out.get("probabilities") if isinstance(out, dict) else None
            if not isinstance(probs, dict):
                continue
            ps.append([float(probs.get(label, 0.0)) for label in labels])
        ys.append(float(code))
    if not ys:
        return None
    return np.array(ys), np.array(ps, dtype=np.float64)


# --- Prometheus -------------------------------------------------------------------------


class MonitorCollector(Collector):
    """Reads the monitor's in-memory state (and two small aggregate queries) at scrape
    time; the request path pays nothing for Prometheus."""

    def __init__(self, monitor: Monitor,
                 extra: Callable[[], Iterable[Metric]] | None = None) -> None:
        self.monitor = monitor
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        mon = self.monitor
        info = GaugeMetricFamily("appliance_build_info", "the appliance's version",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._requests(mon)
        yield from self._models(mon)
        yield from self._drift(mon)
        yield from self._store_counts(mon)
        yield from self._resources(mon)
        if self.extra is not None:
            yield from self.extra()

    @staticmethod
    def _requests(mon: Monitor) -> Iterator[Metric]:
        totals = mon.requests.totals()
        requests = CounterMetricFamily("appliance_requests", "predict requests served",
                                       labels=["pipeline"])
        rows = CounterMetricFamily("appliance_predicted_rows", "rows predicted",
                                   labels=["pipeline"])
        errors = CounterMetricFamily("appliance_request_errors",
                                     "predict requests answered with an error, by class",
                                     labels=["pipeline", "class"])
        latency = HistogramMetricFamily("appliance_request_duration_seconds",
                                        "time to answer a predict request",
                                        labels=["pipeline"])
        for name, t in sorted(totals.items()):
            requests.add_metric([name], t.requests)
            rows.add_metric([name], t.rows)
            errors.add_metric([name, "4xx"], t.errors_4xx)
            errors.add_metric([name, "5xx"], t.errors_5xx)
            cumulative = np.cumsum(t.buckets)
            buckets = [(_le(b), float(cumulative[i])) for b, i in
                       zip(PROMETHEUS_BOUNDS, _PROM_INDEX, strict=True)]
            buckets.append(("+Inf", float(t.requests)))
            latency.add_metric([name], buckets, sum_value=t.latency_sum)
        yield from (requests, rows, errors, latency)

    @staticmethod
    def _models(mon: Monitor) -> Iterator[Metric]:
        version = GaugeMetricFamily("appliance_model_production_version",
                                    "the model version being served", labels=["pipeline"])
        for name, v in sorted(mon.live.versions().items()):
            version.add_metric([name], v)
        yield version
        if mon.training_busy is not None:
            busy = GaugeMetricFamily("appliance_training_running",
                                     "1 while a training job runs", labels=["pipeline"])
            for name in sorted(mon._known):
                busy.add_metric([name], 1.0 if mon.training_busy(name) else 0.0)
            yield busy
        live = GaugeMetricFamily("appliance_live_metric",
                                 "the production model's metric on the newest window of "
                                 "predictions with feedback", labels=["pipeline", "metric"])
        valid = GaugeMetricFamily("appliance_validation_metric",
                                  "the same metric at validation", labels=["pipeline", "metric"])
        for name, p in sorted(mon._latest_performance.items()):
            live.add_metric([name, p.metric], p.value)
            if p.validation_value is not None:
                valid.add_metric([name, p.metric], p.validation_value)
        yield from (live, valid)

    @staticmethod
    def _drift(mon: Monitor) -> Iterator[Metric]:
        labels = ["pipeline", "feature"]
        psi = GaugeMetricFamily("appliance_drift_psi", "PSI of each feature (and of the "
                                "predictions) in the latest drift check", labels=labels)
        ks = GaugeMetricFamily("appliance_drift_ks", "Kolmogorov-Smirnov statistic of each "
                               "numeric feature in the latest drift check", labels=labels)
        js = GaugeMetricFamily("appliance_drift_js", "Jensen-Shannon distance of each "
                               "categorical feature in the latest drift check", labels=labels)
        flagged = GaugeMetricFamily("appliance_feature_drifted",
                                    "1 when the feature drifted in the latest check",
                                    labels=labels)
        detected = GaugeMetricFamily("appliance_drift_detected",
                                     "1 when the latest check found the data set or the "
                                     "predictions drifted", labels=["pipeline"])
        share = GaugeMetricFamily("appliance_drift_share_ratio",
                                  "share of features that drifted in the latest check",
                                  labels=["pipeline"])
        with mon._drift_lock:
            names = sorted(mon._latest_drift)
        reports = [(n, r) for n in names if (r := mon.current_drift(n)) is not None]
        for name, r in reports:
            detected.add_metric([name], 1.0 if drift.alarm(r) else 0.0)
            share.add_metric([name], r.drifted_share)
            for f in [*r.features, *([r.prediction] if r.prediction else [])]:
                if f.psi is not None:
                    psi.add_metric([name, f.feature], f.psi)
                if f.ks is not None:
                    ks.add_metric([name, f.feature], f.ks)
                if f.js is not None:
                    js.add_metric([name, f.feature], f.js)
                flagged.add_metric([name, f.feature], 1.0 if f.drifted else 0.0)
        yield from (psi, ks, js, flagged, detected, share)

    @staticmethod
    def _store_counts(mon: Monitor) -> Iterator[Metric]:
        ingestions = CounterMetricFamily("appliance_ingestions", "files ingested, by outcome",
                                         labels=["pipeline", "status"])
        ingest_time = SummaryMetricFamily("appliance_ingestion_duration_seconds",
                                          "time spent ingesting files", labels=["pipeline"])
        per_pipeline: dict[str, list[float]] = {}
        for c in mon.store.ingestion_counts():
            ingestions.add_metric([c.pipeline, c.status], c.count)
            acc = per_pipeline.setdefault(c.pipeline, [0, 0.0])
            acc[0] += c.count
            acc[1] += c.seconds
        for name, (count, seconds) in sorted(per_pipeline.items()):
            ingest_time.add_metric([name], count_value=count, sum_value=seconds)
        jobs = CounterMetricFamily("appliance_jobs", "finished jobs (training), by outcome",
                                   labels=["pipeline", "kind", "status"])
        job_time = SummaryMetricFamily("appliance_job_duration_seconds",
                                       "time spent in finished jobs",
                                       labels=["pipeline", "kind"])
        per_job: dict[tuple[str, str], list[float]] = {}
        for c in mon.store.job_counts():
            jobs.add_metric([c.pipeline, c.kind, c.status], c.count)
            acc = per_job.setdefault((c.pipeline, c.kind), [0, 0.0])
            acc[0] += c.count
            acc[1] += c.seconds
        for (name, kind), (count, seconds) in sorted(per_job.items()):
            job_time.add_metric([name, kind], count_value=count, sum_value=seconds)
        yield from (ingestions, ingest_time, jobs, job_time)

    @staticmethod
    def _resources(mon: Monitor) -> Iterator[Metric]:
        s = mon.latest_resources
        if s is None:
            return
        gauges = [
            ("appliance_process_cpu_usage_ratio", "CPU used by the daemon (1 = one core)",
             s.process_cpu_percent / 100),
            ("appliance_process_resident_memory_bytes", "resident memory of the daemon",
             s.process_rss_bytes),
            ("appliance_process_threads", "threads of the daemon", s.process_threads),
            ("appliance_process_open_fds", "open file descriptors of the daemon",
             s.process_open_files),
            ("appliance_system_cpu_usage_ratio", "CPU used on the box (all cores)",
             s.cpu_percent / 100),
            ("appliance_system_memory_available_bytes", "memory available on the box",
             s.memory_available_bytes),
            ("appliance_system_memory_used_ratio", "share of the box's memory in use",
             s.memory_percent / 100),
            ("appliance_system_load1", "load average over 1 minute", s.load_1m),
            ("appliance_state_disk_free_bytes", "free space on the state directory's disk",
             s.disk_free_bytes),
            ("appliance_resources_sampled_timestamp_seconds", "when resources were sampled",
             s.ts),
        ]
        if s.temperature_c is not None:
            gauges.append(("appliance_system_temperature_celsius",
                           "the hottest temperature sensor of the box", s.temperature_c))
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g


def _le(bound: float) -> str:
    return repr(float(bound))
