"""Drift checks: a newly ingested data set, and the sampled inputs of recent requests,
against the production model's reference profile. Each report is stored, the latest of
each pipeline kept in memory, and ``drift_detected`` raised. The statistics themselves are
:mod:`appliance.monitoring.drift`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import numpy as np
import polars as pl

from appliance.api_types import DriftHistoryPoint, DriftReport, DriftResponse
from appliance.core import ApplianceError, Settings
from appliance.features import profile, to_matrix
from appliance.models import LiveModels, LoadedModel
from appliance.monitoring import drift
from appliance.monitoring.alarm import Alarm
from appliance.store import DriftRecord, Events, Store

log = logging.getLogger("appliance.monitor")

DRIFT_MAX_ROWS = 10_000  # sampled inputs read for one drift check
DRIFT_PREDICT_ROWS = 100_000  # rows of a new data set the model predicts for prediction drift


class DriftChecks:
    """The drift checks of every pipeline, and their latest reports."""

    def __init__(self, store: Store, settings: Settings, events: Events, live: LiveModels,
                 clock: Callable[[], float], on_drift: Callable[[str, DriftReport], None],
                 pipelines: Iterable[str]) -> None:
        self.store = store
        self.settings = settings
        self.events = events
        self.live = live
        self.clock = clock
        # Told when sampled traffic starts drifting (the monitor passes it on to retraining).
        self.on_drift = on_drift
        self._alarms: dict[str, Alarm] = {}
        self._seen: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, DriftReport] = {}
        self._lock = threading.Lock()
        for name in pipelines:
            latest = self.store.drift_reports(name, limit=1)
            if latest:
                report = msgspec.convert(latest[0].report, DriftReport)
                self._latest[name] = report
                self._alarms[name] = Alarm(drift.alarm(report))

    def check(self, pipeline: str, force: bool = False) -> DriftReport | None:
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
        if not force and self._seen.get(pipeline) == seen:
            return None
        self._seen[pipeline] = seen
        frame = rows_frame([row for _, _, row, _ in logged], model)
        outputs = [out for _, version, _, out in logged if version == model.version]
        predictions = (logged_predictions(outputs, model.spec.task)
                       if len(outputs) >= cfg.min_rows else None)
        return self._report(pipeline, model, reference, frame, predictions, "predictions")

    def check_frame(self, pipeline: str, frame: pl.DataFrame,
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
        with self._lock:
            self._latest[pipeline] = report
            alarm = self._alarms.setdefault(pipeline, Alarm())
            turned_on = alarm.update(drift.alarm(report))
        # A new data set that drifts is news every time; sampled traffic only when it
        # starts drifting.
        if drift.alarm(report) and (turned_on or source == "ingestion"):
            self._emit(report)
        return report

    def _emit(self, report: DriftReport) -> None:
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
        if report.source == "predictions":
            try:
                self.on_drift(report.pipeline, report)
            except Exception:
                log.exception("on_drift_failed pipeline=%s", report.pipeline)

    def response(self, pipeline: str, limit: int = 100) -> DriftResponse:
        records = self.store.drift_reports(pipeline, limit=limit)
        latest = msgspec.convert(records[0].report, DriftReport) if records else None
        return DriftResponse(pipeline=pipeline, latest=latest,
                             history=[_history_point(r) for r in reversed(records)])

    def current(self, pipeline: str) -> DriftReport | None:
        """The latest drift report about the model being served; None when that model has
        not been checked yet (a report about the model it replaced is history)."""
        with self._lock:
            report = self._latest.get(pipeline)
        live = self.live.get(pipeline)
        if report is None or live is None or report.model_version != live.version:
            return None
        return report

    def pipelines_reported(self) -> list[str]:
        """The pipelines with a latest report, sorted."""
        with self._lock:
            return sorted(self._latest)


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
