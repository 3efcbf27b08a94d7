"""Prometheus' view of the versions on trial: a candidate shadowing production (its requests,
answers, errors, agreement and latency) and a newly promoted version under the rollout's
watch. Read at scrape time, like :mod:`appliance.monitoring.prometheus`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.monitoring.rollout import RolloutWatch
from appliance.monitoring.shadow import ShadowScoring


class CandidateCollector(Collector):
    def __init__(self, shadows: ShadowScoring | None, rollout: RolloutWatch | None) -> None:
        self.shadows = shadows
        self.rollout = rollout

    def collect(self) -> Iterator[Metric]:
        yield from self._shadows()
        yield from self._rollout()

    def _shadows(self) -> Iterator[Metric]:
        labels = ["pipeline", "version"]
        version = GaugeMetricFamily("appliance_shadow_version",
                                    "the candidate version shadowing production",
                                    labels=["pipeline"])
        counters = {
            "requests": CounterMetricFamily(
                "appliance_shadow_requests", "production requests while it shadowed",
                labels=labels),
            "sampled": CounterMetricFamily(
                "appliance_shadow_sampled_requests", "requests handed to the shadow "
                "(shadow.sample_rate)", labels=labels),
            "scored": CounterMetricFamily(
                "appliance_shadow_scored_requests", "requests the shadow answered",
                labels=labels),
            "errors": CounterMetricFamily(
                "appliance_shadow_errors", "requests the shadow failed on", labels=labels),
            "dropped": CounterMetricFamily(
                "appliance_shadow_dropped_requests", "sampled requests dropped because the "
                "shadow's queue was full (it never slows production)", labels=labels),
        }
        agreement = GaugeMetricFamily("appliance_shadow_agreement_ratio",
                                      "share of rows where the shadow gave production's "
                                      "answer (class, or within tolerance)", labels=labels)
        p99 = GaugeMetricFamily("appliance_shadow_latency_p99_seconds",
                                "the shadow's p99 time to answer", labels=labels)
        scoring = self.shadows
        active = dict(scoring.active) if scoring is not None else {}
        for pipeline, shadow in sorted(active.items()):
            n = scoring.numbers(pipeline, shadow.version) if scoring is not None else None
            if n is None:
                continue
            key = [pipeline, str(shadow.version)]
            version.add_metric([pipeline], shadow.version)
            for field, family in counters.items():
                family.add_metric(key, getattr(n, field))
            if n.agreement is not None:
                agreement.add_metric(key, n.agreement)
            if n.p99_ms is not None:
                p99.add_metric(key, n.p99_ms / 1000)
        yield version
        yield from counters.values()
        yield from (agreement, p99)

    def _rollout(self) -> Iterator[Metric]:
        watched = GaugeMetricFamily("appliance_rollout_watched_version",
                                    "the newly promoted version under watch (rolled back on "
                                    "its own if it does significantly worse)",
                                    labels=["pipeline", "previous"])
        left = GaugeMetricFamily("appliance_rollout_remaining_seconds",
                                 "how long the watch still runs", labels=["pipeline"])
        if self.rollout is not None:
            now = self.rollout.clock()
            for pipeline, w in sorted(dict(self.rollout.watches).items()):
                watched.add_metric([pipeline, str(w.previous)], w.version)
                left.add_metric([pipeline], max(0.0, w.until - now))
        yield from (watched, left)
