"""Live performance: feedback (true outcomes) joined to the prediction log, scored per
window of prediction times with the model's primary metric, and judged against the metric
the model had at validation (``performance_degraded``)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.core import Settings
from appliance.models import LiveModels
from appliance.models import metrics as m
from appliance.monitoring.alarm import Alarm
from appliance.store import Events, LivePerformanceRecord, Store


class PerformanceChecks:
    """The live performance of every pipeline, and the newest scored window of each
    production model (``latest``, for Prometheus)."""

    def __init__(self, store: Store, settings: Settings, events: Events, live: LiveModels,
                 state_root: Path, clock: Callable[[], float]) -> None:
        self.store = store
        self.settings = settings
        self.events = events
        self.live = live
        self.state_root = state_root
        self.clock = clock
        self.latest: dict[str, LivePerformanceRecord] = {}
        self._alarms: dict[str, Alarm] = {}
        self._meta_cache: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()  # the ingest and checks threads both score

    def check(self, pipeline: str) -> list[LivePerformanceRecord]:
        """Join feedback to the prediction log and score each window of prediction times
        with the model's primary metric; raise ``performance_degraded`` when the newest
        scored window of the production model is worse than its validation metric by
        more than ``monitor.performance_tolerance`` (a share of that metric)."""
        with self._lock:
            return self._check(pipeline)

    def _check(self, pipeline: str) -> list[LivePerformanceRecord]:
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
        self.latest[pipeline] = point
        if point.validation_value is None:
            return
        higher = _higher_is_better(point.metric)
        tolerance = self.settings.monitor.performance_tolerance * abs(point.validation_value)
        worse = (point.validation_value - point.value if higher
                 else point.value - point.validation_value)
        alarm = self._alarms.setdefault(pipeline, Alarm())
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


def _higher_is_better(metric: str) -> bool:
    return metric in ("auc", "accuracy", "f1", "macro_f1", "r2")


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
