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

:class:`Monitor` is the face the daemon and the HTTP app call; each concern is a small
object it holds, in a module of its own: request windows (:mod:`.requests`), resources
(:mod:`.resources`), retention (:mod:`.retention`), drift checks (:mod:`.drift_checks`),
live performance (:mod:`.performance`) and Prometheus (:mod:`.prometheus`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from prometheus_client.core import Metric

from appliance.api_types import (
    DriftReport,
    DriftResponse,
    LivePerformancePoint,
    PipelineMetrics,
    PipelineSummary,
    SystemResponse,
)
from appliance.core import Settings
from appliance.features import read_rows
from appliance.models import LiveModels
from appliance.monitoring import drift
from appliance.monitoring.drift_checks import DriftChecks
from appliance.monitoring.performance import PerformanceChecks
from appliance.monitoring.prometheus import MonitorCollector
from appliance.monitoring.requests import (
    ASGIApp,
    RequestMetrics,
    instrument,
    merge_records,
    metrics_window,
    percentile,
)
from appliance.monitoring.resources import ResourceSampler, resource_sample
from appliance.monitoring.retention import apply_retention
from appliance.store import (
    Events,
    IngestionRecord,
    LivePerformanceRecord,
    ResourceRecord,
    Store,
    WindowRecord,
)

log = logging.getLogger("appliance.monitor")

RAW_VIEW_MAX_SECONDS = 6 * 3600  # longer ranges are answered from hourly roll-ups


@dataclass
class Monitor:
    """The monitor the daemon runs and the HTTP app reads: one method per job or read, each
    handed to the part that owns it."""

    store: Store
    settings: Settings
    events: Events
    live: LiveModels
    state_root: Path
    clock: Callable[[], float] = time.time
    training_busy: Callable[[str], bool] | None = None
    on_drift: Callable[[str, DriftReport], None] | None = None
    requests: RequestMetrics = field(init=False)
    resource_sampler: ResourceSampler = field(init=False)
    drift_checks: DriftChecks = field(init=False)
    performance_checks: PerformanceChecks = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.settings.monitor
        self.requests = RequestMetrics(cfg.window_seconds, self.clock)
        self._known: frozenset[str] = frozenset(self.settings.pipelines)
        # The parts read the time through _now, not a copy of the clock: whoever holds
        # the monitor may set monitor.clock later (the tests do).
        self.resource_sampler = ResourceSampler(self.store, self.settings, self.events,
                                                self.state_root, self._now)
        self.refresh_known()
        self.drift_checks = DriftChecks(self.store, self.settings, self.events, self.live,
                                        self._now, self._drifted, self._known,
                                        state_root=self.state_root)
        self.live.on_swap(self.drift_checks.served_changed)
        self.performance_checks = PerformanceChecks(self.store, self.settings, self.events,
                                                    self.live, self.state_root, self._now)

    def _now(self) -> float:
        return self.clock()

    def _drifted(self, pipeline: str, report: DriftReport) -> None:
        """Sampled traffic started drifting: tell ``on_drift``, if someone set it (the
        daemon sets it after building the monitor)."""
        if self.on_drift is not None:
            self.on_drift(pipeline, report)

    @property
    def known(self) -> frozenset[str]:
        """The pipelines whose requests are counted (see :meth:`refresh_known`)."""
        return self._known

    @property
    def latest_resources(self) -> ResourceRecord | None:
        """The newest resource sample of this process, None before the first."""
        return self.resource_sampler.latest

    # --- the request path ----------------------------------------------------------------

    def refresh_known(self) -> None:
        """The pipelines whose requests are counted: configured or seen by the store."""
        names = {p.name for p in self.store.pipelines()} | set(self.settings.pipelines)
        self._known = frozenset(names)

    def is_known(self, name: str) -> bool:
        return name in self._known or self.live.get(name) is not None

    def instrument(self, app: ASGIApp,
                   resolve: Callable[[dict[str, Any]], str | None] | None = None) -> ASGIApp:
        """The HTTP app, with predict calls counted (see :func:`instrument`), and those of
        the other prediction routes that ``resolve`` names a pipeline for."""
        return instrument(app, self.requests, self.is_known, resolve)

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
        sample = self.resource_sampler.sample()
        self.refresh_known()
        return sample

    def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Remove what is older than the retention settings; returns rows removed per kind
        (see :func:`apply_retention`)."""
        now = self.clock() if now is None else now
        return apply_retention(self.store, self.settings.monitor, now)

    # --- drift ---------------------------------------------------------------------------

    def drift_check_all(self) -> None:
        for name in sorted(self._known | set(self.live.versions())):
            try:
                self.drift_check(name)
            except Exception:
                log.exception("drift_check_failed pipeline=%s", name)

    def drift_check(self, pipeline: str, force: bool = False) -> DriftReport | None:
        """Drift of the recent sampled prediction inputs (see :meth:`DriftChecks.check`)."""
        return self.drift_checks.check(pipeline, force)

    def on_ingested(self, pipeline: str, record: IngestionRecord) -> DriftReport | None:
        """The hook after a file is accepted: drift of the new data set against the
        production model (the report, or None when not checked), and of the window of the
        newest data sets when this one is small, then live performance
        (the file may have been feedback). Never raises: monitoring must not fail an
        ingestion."""
        report = None
        try:
            if record.dataset_path:
                frame = read_rows(self.state_root / record.dataset_path, record.rows)
                report = self.drift_checks.check_frame(pipeline, frame, "ingestion",
                                                       version=record.dataset_version)
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
        return self.drift_checks.check_frame(pipeline, frame, source)

    def drift_response(self, pipeline: str, limit: int = 100) -> DriftResponse:
        return self.drift_checks.response(pipeline, limit)

    def current_drift(self, pipeline: str) -> DriftReport | None:
        """The latest drift report about the model being served; None when that model has
        not been checked yet (a report about the model it replaced is history)."""
        return self.drift_checks.current(pipeline)

    # --- live performance ----------------------------------------------------------------

    def performance_check_all(self) -> None:
        for name in sorted(self._known):
            try:
                self.performance_check(name)
            except Exception:
                log.exception("performance_check_failed pipeline=%s", name)

    def performance_check(self, pipeline: str) -> list[LivePerformanceRecord]:
        """Score feedback against the prediction log (see :meth:`PerformanceChecks.check`)."""
        return self.performance_checks.check(pipeline)

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
        return SystemResponse(samples=[resource_sample(r) for r in records])

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
        report = self.drift_checks.headline(summary.name)
        if report is not None:
            summary.drift_status = "drift" if drift.alarm(report) else "ok"
            summary.drift_share = report.drifted_share
            summary.drift_importance_share = report.importance_share
            summary.drift_summary = report.summary or drift.headline(report)
        return summary

    def collector(self, extra: Callable[[], Iterable[Metric]] | None = None) -> MonitorCollector:
        return MonitorCollector(self, extra)
