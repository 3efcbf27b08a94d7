"""Drift checks: every newly ingested data set, the rolling window of the newest data
sets, and the sampled inputs of recent requests, against the production model's
reference profile. Each report is stored, the latest of each pipeline kept in memory, and
``drift_detected`` raised. The statistics themselves are :mod:`appliance.monitoring.drift`;
the window is :mod:`.drift_window`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
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
from appliance.monitoring.drift_window import DataWindow
from appliance.store import DriftRecord, Events, Store

log = logging.getLogger("appliance.monitor")

DRIFT_MAX_ROWS = 10_000  # sampled inputs read for one drift check
DRIFT_PREDICT_ROWS = 100_000  # rows of a new data set the model predicts for prediction drift
WINDOW = "window"
NEWEST = "newest_data"  # the newest data set again, when another model begins serving


def feature_gains(model: LoadedModel) -> dict[str, float]:
    """The model's gain importance per raw feature (a date's parts summed)."""
    gains = model.meta.get("feature_importance") or {}
    out: dict[str, float] = {}
    for f in model.spec.features:
        out[f.name] = sum(float(gains.get(c, 0.0) or 0.0) for c in f.columns())
    return out


class DriftChecks:
    """The drift checks of every pipeline, and their latest reports."""

    def __init__(self, store: Store, settings: Settings, events: Events, live: LiveModels,
                 clock: Callable[[], float], on_drift: Callable[[str, DriftReport], None],
                 pipelines: Iterable[str], state_root: Path | None = None) -> None:
        self.store = store
        self.settings = settings
        self.events = events
        self.live = live
        self.clock = clock
        # Told when sampled traffic or the window starts drifting (the monitor passes it
        # on to retraining).
        self.on_drift = on_drift
        self.window = DataWindow(store, state_root)
        self._alarms: dict[tuple[str, str], Alarm] = {}
        self._seen: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, DriftReport] = {}  # of a data set or of sampled inputs
        self._window: dict[str, DriftReport] = {}  # of the window, newer than any data set
        self._lock = threading.Lock()
        for name in pipelines:
            self._restore(name)

    def _restore(self, name: str) -> None:
        records = {source: self.store.drift_reports(name, limit=1, source=source)
                   for source in ("ingestion", NEWEST, "predictions", WINDOW)}
        newest = max((r[0] for k, r in records.items() if r and k != WINDOW),
                     key=lambda r: r.id, default=None)
        if newest is not None:
            report = msgspec.convert(newest.report, DriftReport)
            self._latest[name] = report
            self._alarms[(name, "batch")] = Alarm(drift.alarm(report))
        win = records[WINDOW]
        ingested = [r[0] for k, r in records.items() if r and k in ("ingestion", NEWEST)]
        if win and all(win[0].id > r.id for r in ingested):
            report = msgspec.convert(win[0].report, DriftReport)
            self._window[name] = report
            self._alarms[(name, WINDOW)] = Alarm(drift.alarm(report))

    def check(self, pipeline: str, force: bool = False) -> DriftReport | None:
        """Compare the sampled prediction inputs of the last ``drift.window_seconds`` with
        the production model's reference, whatever their number (from ``drift.min_rows``).
        None when there is no model, no reference, no sample, or nothing new since the last
        check (unless ``force``)."""
        model = self.live.get(pipeline)
        reference = model.meta.get("reference") if model else None
        if model is None or not reference:
            return None
        cfg = self.settings.drift
        logged = self.store.prediction_inputs(pipeline, self.clock() - cfg.window_seconds,
                                              limit=DRIFT_MAX_ROWS)
        if not logged or len(logged) < cfg.min_rows:
            return None
        seen = (logged[0][0], model.version)
        if not force and self._seen.get(pipeline) == seen:
            return None
        self._seen[pipeline] = seen
        frame = rows_frame([row for _, _, row, _ in logged], model)
        outputs = [out for _, version, _, out in logged if version == model.version]
        predictions = logged_predictions(outputs, model.spec.task) if outputs else None
        return self._report(pipeline, model, reference, frame, predictions, "predictions")

    def check_frame(self, pipeline: str, frame: pl.DataFrame, source: str = "ingestion",
                    version: int | None = None) -> DriftReport | None:
        """Drift of a data set (raw columns, as ingested) against the production model,
        whatever its size (from ``drift.min_rows``); then, when it is smaller than
        ``drift.window_rows`` and ``version`` (its data set version) is given, of the
        window of the newest data sets up to it. Returns the data set's report."""
        model = self.live.get(pipeline)
        reference = model.meta.get("reference") if model else None
        if model is None or not reference:
            return None
        cfg = self.settings.drift
        report = None
        if frame.height >= cfg.min_rows:
            report = self._report(pipeline, model, reference, frame,
                                  self._predictions(model, frame), source)
        else:
            log.info("drift_skipped pipeline=%s rows=%d min_rows=%d (it joins the window)",
                     pipeline, frame.height, cfg.min_rows)
        if source != "predictions":
            with self._lock:
                self._window.pop(pipeline, None)  # the window now ends at this data set
        if version is not None and 0 < frame.height < cfg.window_rows:
            self._check_window(pipeline, model, reference, version)
        return report

    def served_changed(self, model: LoadedModel, old: LoadedModel | None) -> None:
        """Another version serves (promoted, rolled back): compare the newest data set,
        and the window ending with it, with the reference of the model now served, so that
        the pipeline's drift status is about that model from the start (a model trained
        mostly on the data before a shift still sees it as drift). Not when the daemon
        starts: the stored reports stand. On a thread of its own, so that the promotion
        (and its lock) never waits for it."""
        if old is None or old.version == model.version or not model.meta.get("reference"):
            return
        threading.Thread(target=self._recheck, args=(model,), daemon=True,
                         name=f"drift-recheck-{model.pipeline}").start()

    def _recheck(self, model: LoadedModel) -> None:
        if self.live.get(model.pipeline) is not model:
            return  # yet another version serves already; its own re-check follows
        try:
            datasets = self.store.datasets(model.pipeline)
            if not datasets:
                return
            newest = datasets[-1]
            self.check_frame(model.pipeline, self.window.read(newest), NEWEST,
                             version=newest.version)
        except Exception:
            log.exception("drift_check_failed pipeline=%s after v%d began serving",
                          model.pipeline, model.version)

    def _check_window(self, pipeline: str, model: LoadedModel, reference: dict[str, Any],
                      version: int) -> DriftReport | None:
        window, sets = self.window.frame(pipeline, version, self.settings.drift.window_rows)
        if sets < 2:
            return None  # the window is the data set itself, checked already
        return self._report(pipeline, model, reference, window,
                            self._predictions(model, window), WINDOW)

    @staticmethod
    def _predictions(model: LoadedModel, frame: pl.DataFrame) -> Any:
        sample = frame
        if frame.height > DRIFT_PREDICT_ROWS:
            sample = frame.sample(DRIFT_PREDICT_ROWS, seed=0)
        try:
            raw = model.predict_matrix(to_matrix(sample, model.spec))
            return profile.prediction_values(model.spec.task, raw, model.spec.classes)
        except ApplianceError:
            return None  # the data lacks features: feature drift only

    def _report(self, pipeline: str, model: LoadedModel, reference: dict[str, Any],
                frame: pl.DataFrame, predictions: Any, source: str) -> DriftReport:
        report = drift.evaluate(reference, frame, self.settings.drift, pipeline=pipeline,
                                model_version=model.version, source=source,
                                predictions=predictions, importance=feature_gains(model))
        self.store.add_drift_report(
            pipeline=pipeline, ts=self.clock(), source=source,
            model_version=model.version, rows=report.rows, drifted=report.drifted,
            drifted_share=report.drifted_share, report=msgspec.to_builtins(report),
        )
        channel = WINDOW if source == WINDOW else "batch"
        with self._lock:
            if source == WINDOW:
                self._window[pipeline] = report
            else:
                self._latest[pipeline] = report
            alarm = self._alarms.setdefault((pipeline, channel), Alarm())
            turned_on = alarm.update(drift.alarm(report))
        # A new data set that drifts is news every time; sampled traffic and the window
        # only when they start drifting.
        if drift.alarm(report) and (turned_on or source == "ingestion"):
            self._emit(report)
        return report

    def _emit(self, report: DriftReport) -> None:
        names = [f.feature for f in report.features if f.drifted]
        source = {"ingestion": "a new data set", WINDOW: "the newest data sets together",
                  NEWEST: "the newest data set"}.get(report.source, "recent prediction inputs")
        summary = report.summary or drift.headline(report)
        self.events.emit(
            "drift_detected", f"{summary}, in {source} vs the reference of "
            f"v{report.model_version}", pipeline=report.pipeline, level="warning",
            source=report.source, features=names, drifted_share=report.drifted_share,
            importance_share=report.importance_share, severe=report.severe,
            rows=report.rows, method=report.method,
            prediction_drifted=bool(report.prediction and report.prediction.drifted),
            version=report.model_version,
        )
        if report.source in ("predictions", WINDOW):
            try:
                self.on_drift(report.pipeline, report)
            except Exception:
                log.exception("on_drift_failed pipeline=%s", report.pipeline)

    def response(self, pipeline: str, limit: int = 100) -> DriftResponse:
        records = self.store.drift_reports(pipeline, limit=limit)
        batch = next((r for r in records if r.source != WINDOW), None)
        latest = msgspec.convert(batch.report, DriftReport) if batch else None
        headline = self.headline(pipeline)
        return DriftResponse(
            pipeline=pipeline, latest=latest,
            history=[_history_point(r) for r in reversed(records)],
            window=self.current_window(pipeline),
            status=None if headline is None else ("drift" if drift.alarm(headline) else "ok"),
            summary=None if headline is None else (headline.summary
                                                   or drift.headline(headline)))

    def current(self, pipeline: str) -> DriftReport | None:
        """The latest drift report of a data set or of sampled inputs about the model
        being served; None when that model has not been checked yet (a report about the
        model it replaced is history)."""
        with self._lock:
            report = self._latest.get(pipeline)
        return self._about_live(pipeline, report)

    def current_window(self, pipeline: str) -> DriftReport | None:
        """The window's report, while no data set has come since, about the served model."""
        with self._lock:
            report = self._window.get(pipeline)
        return self._about_live(pipeline, report)

    def headline(self, pipeline: str) -> DriftReport | None:
        """The report the pipeline's drift status comes from: the latest, unless the
        window after it drifted and it did not."""
        latest, window = self.current(pipeline), self.current_window(pipeline)
        if window is not None and (latest is None or (drift.alarm(window)
                                                      and not drift.alarm(latest))):
            return window
        return latest

    def _about_live(self, pipeline: str, report: DriftReport | None) -> DriftReport | None:
        live = self.live.get(pipeline)
        if report is None or live is None or report.model_version != live.version:
            return None
        return report

    def pipelines_reported(self) -> list[str]:
        """The pipelines with a latest report, sorted."""
        with self._lock:
            return sorted(set(self._latest) | set(self._window))


def _history_point(r: DriftRecord) -> DriftHistoryPoint:
    features = r.report.get("features", [])
    return DriftHistoryPoint(
        computed_at=r.report.get("computed_at", ""), source=r.source,
        model_version=r.model_version, drifted=r.drifted, drifted_share=r.drifted_share,
        psi={f["feature"]: f["psi"] for f in features if f.get("psi") is not None},
        importance_share=r.report.get("importance_share"), rows=r.rows,
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
