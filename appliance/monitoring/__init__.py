"""Monitoring: request windows, the box's resources, drift of new data and of request
inputs, live performance from feedback, the prediction log, and Prometheus' view of them.

``appliance.monitoring.drift`` is a public module too."""

from appliance.monitoring.monitor import PREDICT_PREFIX, PREDICT_SUFFIX, Monitor, RequestMetrics
from appliance.monitoring.predlog import PredictionIds, PredictionLog

__all__ = [
    "PREDICT_PREFIX",
    "PREDICT_SUFFIX",
    "Monitor",
    "PredictionIds",
    "PredictionLog",
    "RequestMetrics",
]
