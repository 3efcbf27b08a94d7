"""Prometheus' view of the monitor: :class:`MonitorCollector` builds the metric families
(requests, models, drift, ingestions and jobs, resources) from in-memory state at scrape
time, so the request path pays nothing for Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Protocol

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from appliance import __version__
from appliance.models import LiveModels
from appliance.monitoring import drift
from appliance.monitoring.drift_checks import DriftChecks
from appliance.monitoring.performance import PerformanceChecks
from appliance.monitoring.requests import LATENCY_BOUNDS, RequestMetrics
from appliance.monitoring.resources import ResourceSampler
from appliance.store import Store

# The subset Prometheus gets (cumulative counts at these bounds are exact).
PROMETHEUS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
_PROM_INDEX = [LATENCY_BOUNDS.index(b) for b in PROMETHEUS_BOUNDS]
# Every outcome is exported from the start, as 0 until it happens: Prometheus' increase()
# and rate() see a series' first sample as its start, so a counter born at 1 (the first
# refused file, the first failed training) would never raise an alert.
INGESTION_OUTCOMES = ("accepted", "rejected", "duplicate")
JOB_OUTCOMES = ("succeeded", "failed", "cancelled")


class MonitorView(Protocol):
    """What a scrape reads of the monitor (:class:`appliance.monitoring.Monitor`): named
    here so that this module does not import the monitor that builds its collector."""

    requests: RequestMetrics
    live: LiveModels
    store: Store
    training_busy: Callable[[str], bool] | None
    resource_sampler: ResourceSampler
    drift_checks: DriftChecks
    performance_checks: PerformanceChecks

    @property
    def known(self) -> frozenset[str]: ...


class MonitorCollector(Collector):
    """Reads the monitor's in-memory state (and two small aggregate queries) at scrape
    time; the request path pays nothing for Prometheus."""

    def __init__(self, monitor: MonitorView,
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
    def _requests(mon: MonitorView) -> Iterator[Metric]:
        totals = mon.requests.totals()
        requests = CounterMetricFamily("appliance_requests",
                                       "prediction requests served (predict, the Open "
                                       "Inference Protocol's infer, MLflow's /invocations)",
                                       labels=["pipeline"])
        rows = CounterMetricFamily("appliance_predicted_rows", "rows predicted",
                                   labels=["pipeline"])
        errors = CounterMetricFamily("appliance_request_errors",
                                     "prediction requests answered with an error, by "
                                     "class",
                                     labels=["pipeline", "class"])
        latency = HistogramMetricFamily("appliance_request_duration_seconds",
                                        "time to answer a prediction request",
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
    def _models(mon: MonitorView) -> Iterator[Metric]:
        version = GaugeMetricFamily("appliance_model_production_version",
                                    "the model version being served", labels=["pipeline"])
        for name, v in sorted(mon.live.versions().items()):
            version.add_metric([name], v)
        yield version
        if mon.training_busy is not None:
            busy = GaugeMetricFamily("appliance_training_running",
                                     "1 while a training job runs", labels=["pipeline"])
            for name in sorted(mon.known):
                busy.add_metric([name], 1.0 if mon.training_busy(name) else 0.0)
            yield busy
        live = GaugeMetricFamily("appliance_live_metric",
                                 "the production model's metric on the newest window of "
                                 "predictions with feedback", labels=["pipeline", "metric"])
        valid = GaugeMetricFamily("appliance_validation_metric",
                                  "the same metric at validation", labels=["pipeline", "metric"])
        for name, p in sorted(mon.performance_checks.latest.items()):
            live.add_metric([name, p.metric], p.value)
            if p.validation_value is not None:
                valid.add_metric([name, p.metric], p.validation_value)
        yield from (live, valid)

    @staticmethod
    def _drift(mon: MonitorView) -> Iterator[Metric]:
        labels = ["pipeline", "feature"]
        psi = GaugeMetricFamily("appliance_drift_psi", "PSI of each feature (and of the "
                                "predictions) in the latest drift check", labels=labels)
        ks = GaugeMetricFamily("appliance_drift_ks", "Kolmogorov-Smirnov statistic of each "
                               "numeric feature in the latest drift check", labels=labels)
        js = GaugeMetricFamily("appliance_drift_js", "Jensen-Shannon distance of each "
                               "categorical feature in the latest drift check", labels=labels)
        pvalue = GaugeMetricFamily("appliance_drift_p_value",
                                   "a tested feature's smallest p-value in the latest check "
                                   "(Holm-corrected; samples up to drift.test_max_rows rows)",
                                   labels=labels)
        flagged = GaugeMetricFamily("appliance_feature_drifted",
                                    "1 when the feature drifted in the latest check",
                                    labels=labels)
        detected = GaugeMetricFamily("appliance_drift_detected",
                                     "1 when the latest check found the data set or the "
                                     "predictions drifted", labels=["pipeline"])
        share = GaugeMetricFamily("appliance_drift_share_ratio",
                                  "share of features that drifted in the latest check",
                                  labels=["pipeline"])
        weighted = GaugeMetricFamily("appliance_drift_importance_share_ratio",
                                     "share of the production model's gain importance "
                                     "carried by the features that drifted in the latest "
                                     "check", labels=["pipeline"])
        severe = GaugeMetricFamily("appliance_drift_severe_features",
                                   "features that drifted severely (PSI above "
                                   "drift.severe_psi, or every value missing) in the latest "
                                   "check", labels=["pipeline"])
        names = mon.drift_checks.pipelines_reported()
        reports = [(n, r) for n in names if (r := mon.drift_checks.headline(n)) is not None]
        for name, r in reports:
            detected.add_metric([name], 1.0 if drift.alarm(r) else 0.0)
            share.add_metric([name], r.drifted_share)
            severe.add_metric([name], float(len(r.severe)))
            if r.importance_share is not None:
                weighted.add_metric([name], r.importance_share)
            for f in [*r.features, *([r.prediction] if r.prediction else [])]:
                if f.psi is not None:
                    psi.add_metric([name, f.feature], f.psi)
                if f.ks is not None:
                    ks.add_metric([name, f.feature], f.ks)
                if f.js is not None:
                    js.add_metric([name, f.feature], f.js)
                if f.p_value is not None:
                    pvalue.add_metric([name, f.feature], f.p_value)
                flagged.add_metric([name, f.feature], 1.0 if f.drifted else 0.0)
        yield from (psi, ks, js, pvalue, flagged, detected, share, weighted, severe)

    @staticmethod
    def _store_counts(mon: MonitorView) -> Iterator[Metric]:
        ingestions = CounterMetricFamily("appliance_ingestions", "files ingested, by outcome",
                                         labels=["pipeline", "status"])
        ingest_time = SummaryMetricFamily("appliance_ingestion_duration_seconds",
                                          "time spent ingesting files", labels=["pipeline"])
        last = GaugeMetricFamily("appliance_last_ingestion_timestamp_seconds",
                                 "when the pipeline's newest file of each outcome was "
                                 "ingested (Unix time): stale data shows here",
                                 labels=["pipeline", "status"])
        per_pipeline: dict[str, list[float]] = {}
        counts = mon.store.ingestion_counts()
        seen = {(c.pipeline, c.status) for c in counts}
        for name in sorted(mon.known):   # zeros, so that increase() sees the first one
            for status in INGESTION_OUTCOMES:
                if (name, status) not in seen:
                    ingestions.add_metric([name, status], 0)
        for c in counts:
            ingestions.add_metric([c.pipeline, c.status], c.count)
            if c.last_at:
                last.add_metric([c.pipeline, c.status], _unix(c.last_at))
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
        job_counts = mon.store.job_counts()
        seen = {(c.pipeline, c.kind, c.status) for c in job_counts}
        for name in sorted(mon.known):
            for status in JOB_OUTCOMES:
                if (name, "train", status) not in seen:
                    jobs.add_metric([name, "train", status], 0)
        for c in job_counts:
            jobs.add_metric([c.pipeline, c.kind, c.status], c.count)
            acc = per_job.setdefault((c.pipeline, c.kind), [0, 0.0])
            acc[0] += c.count
            acc[1] += c.seconds
        for (name, kind), (count, seconds) in sorted(per_job.items()):
            job_time.add_metric([name, kind], count_value=count, sum_value=seconds)
        yield from (ingestions, ingest_time, last, jobs, job_time)

    @staticmethod
    def _resources(mon: MonitorView) -> Iterator[Metric]:
        s = mon.resource_sampler.latest
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
        if mon.resource_sampler.disk_total_bytes is not None:
            gauges.append(("appliance_state_disk_size_bytes",
                           "size of the state directory's disk",
                           mon.resource_sampler.disk_total_bytes))
        if s.temperature_c is not None:
            gauges.append(("appliance_system_temperature_celsius",
                           "the hottest temperature sensor of the box", s.temperature_c))
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _le(bound: float) -> str:
    return repr(float(bound))
