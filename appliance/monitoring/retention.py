"""Retention: what the monitor keeps in SQLite is bounded by age (raw windows and samples,
hourly roll-ups, drift reports, live performance, feedback, predictions) and, for the
prediction log, by count per pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.core import MonitorSettings
from appliance.store import Store

log = logging.getLogger("appliance.monitor")


def apply_retention(store: Store, cfg: MonitorSettings, now: float) -> dict[str, int]:
    """Remove what is older than the retention settings; returns rows removed per kind.
    Deletes run in small transactions so serving never waits long on the store."""
    raw_before = now - cfg.raw_retention_hours * 3600
    rollup_before = now - cfg.rollup_retention_days * 86400
    predictions_before = now - cfg.predictions_max_age_days * 86400

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
