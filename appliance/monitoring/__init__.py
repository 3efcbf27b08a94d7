"""Monitoring: request windows, the box's resources, drift of new data and of request
inputs, live performance from feedback, the prediction log, and Prometheus' view of them.

``appliance.monitoring.drift`` (and its statistics, ``drift_stats``) are public modules too."""

from appliance.monitoring.drift_checks import rows_frame
from appliance.monitoring.monitor import Monitor
from appliance.monitoring.predlog import PredictionIds, PredictionLog
from appliance.monitoring.prometheus_candidates import CandidateCollector
from appliance.monitoring.requests import (
    LATENCY_BOUNDS,
    PREDICT_PREFIX,
    PREDICT_SUFFIX,
    RequestMetrics,
    percentile,
)
from appliance.monitoring.rollout import RolloutWatch
from appliance.monitoring.shadow import ShadowNumbers, ShadowScoring

__all__ = [
    "LATENCY_BOUNDS",
    "PREDICT_PREFIX",
    "PREDICT_SUFFIX",
    "CandidateCollector",
    "Monitor",
    "PredictionIds",
    "PredictionLog",
    "RequestMetrics",
    "RolloutWatch",
    "ShadowNumbers",
    "ShadowScoring",
    "percentile",
    "rows_frame",
]
