"""Suspect batches: a labelled batch whose labels look wrong is held out of training until
an operator releases or discards it.

When a file is accepted, after its drift was checked, :meth:`SuspectBatches.on_accepted`
scores it with the production model (:func:`appliance.models.check_frame`). When the model
does far worse on it than on its validation rows while the batch's features did not
drift, the labels are suspect: a ``suspect_labels`` event names the file, the metric and
the numbers, and with ``retrain.hold_suspect`` (the default) the data set version is
``held``: it does not start training and no training uses it. When the features drifted
too, the world changed: the batch trains as usual, through the gate.

An operator then releases it (it trains like any data set, and the new-data policy runs
as if it had just arrived) or discards it (it never trains; nothing is deleted: the
original stays in ``archive/``, the data set's Parquet file in ``datasets/``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import polars as pl

from appliance.api_types import DatasetActionResponse
from appliance.core import ApplianceError, Settings, StateDir
from appliance.features import read_rows
from appliance.models import LabelCheck, LiveModels, LoadedModel, check_frame
from appliance.store import DatasetRecord, Events, IngestionRecord, Store

log = logging.getLogger("appliance.suspect")


class SuspectBatches:
    def __init__(self, state: StateDir, store: Store, events: Events, settings: Settings,
                 live: LiveModels, trainer: Any, features: Any = None) -> None:
        self.state = state
        self.store = store
        self.events = events
        self.settings = settings
        self.live = live
        # The Trainer (its new-data policy runs on a release), and the feature store (a
        # model trained on joined or derived features scores the batch with them).
        self.trainer = trainer
        self.features = features
        # Data set versions being checked: a training that starts meanwhile leaves them out
        # (the trainer's builder asks through unchecked()).
        self._checking: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def checking(self, pipeline: str, version: int | None) -> Iterator[None]:
        """While a new batch's drift and labels are checked, no training uses it."""
        if version is None:
            yield
            return
        with self._lock:
            self._checking.setdefault(pipeline, set()).add(version)
        try:
            yield
        finally:
            with self._lock:
                self._checking.get(pipeline, set()).discard(version)

    def unchecked(self, pipeline: str) -> set[int]:
        with self._lock:
            return set(self._checking.get(pipeline, ()))

    # --- a new batch ---------------------------------------------------------------------

    def check(self, pipeline: str, record: IngestionRecord) -> LabelCheck | None:
        """Score an accepted batch with the production model and judge its labels; None
        when there is nothing to judge it by (no model yet) or it could not be read."""
        model = self.live.get(pipeline)
        if model is None or not record.dataset_path:
            return None
        cfg = self.settings.pipeline(pipeline)
        frame = read_rows(self.state.root / record.dataset_path, record.rows)
        frame = self._with_model_features(frame, model, cfg.timestamp)
        return check_frame(model, frame, tolerance=cfg.retrain.suspect_tolerance,
                           z=cfg.retrain.suspect_z, metric=cfg.train.metric)

    def on_accepted(self, pipeline: str, record: IngestionRecord,
                    drifted: bool | None) -> bool:
        """Judge a new batch's labels, after its drift check (``drifted``: whether its
        features drifted; None when they were not checked). Returns True when the batch
        is held: it must not start training. Never raises: a check that fails lets the
        batch train, as before."""
        version = record.dataset_version
        if version is None:
            return False
        try:
            check = self.check(pipeline, record)
        except Exception:
            log.exception("label_check_failed pipeline=%s dataset_version=%s", pipeline,
                          version)
            return False
        if check is None:
            return False
        log.info("label_check pipeline=%s dataset_version=%d suspect=%s checked=%s: %s",
                 pipeline, version, check.suspect, check.checked, check.reason)
        if not check.suspect:
            return False
        if drifted:
            log.info("suspect_labels_but_drifted pipeline=%s dataset_version=%d: the features "
                     "drifted too, so the world changed: it trains as usual, through the gate",
                     pipeline, version)
            return False
        hold = self.settings.pipeline(pipeline).retrain.hold_suspect
        features = ("its features did not drift" if drifted is False
                    else "its drift was not checked")
        where = f"{record.file_name} (data set v{version})"
        if hold:
            then = (f"held out of training until an operator releases it (appliance release "
                    f"{pipeline} {version}) or discards it")
            self.store.set_dataset_status(pipeline, version, "held",
                                          f"suspect labels: v{check.version} {check.reason}")
        else:
            then = "it trains anyway (retrain.hold_suspect = false)"
        self.events.emit(
            "suspect_labels",
            f"{where}: labels suspect, {features}: production v{check.version} "
            f"{check.reason}; {then}",
            pipeline=pipeline, level="warning", file=record.file_name, dataset_version=version,
            held=hold, model_version=check.version, **check.details,
        )
        return hold

    def _with_model_features(self, frame: pl.DataFrame, model: LoadedModel,
                             timestamp: str | None) -> pl.DataFrame:
        """The batch as the model was trained: joined to its feature sets (as of each
        row's time) and with its derived features."""
        spec = model.spec
        if self.features is None or not (spec.joins or spec.derived):
            return frame
        plan = SimpleNamespace(join=[j["feature_set"] for j in spec.joins],
                               timestamp=timestamp, derived=dict(spec.derived))
        prepared, _ = self.features.prepare(frame, plan)
        return prepared

    # --- an operator's answer ------------------------------------------------------------

    def _dataset(self, pipeline: str, version: int) -> DatasetRecord:
        record = self.store.dataset(pipeline, version) if 0 < version < 2**63 else None
        if record is None:
            raise ApplianceError(
                "unknown_dataset", f"pipeline `{pipeline}` has no data set version {version}",
                {"pipeline": pipeline, "version": version}, status=404,
            )
        return record

    def _original(self, record: DatasetRecord) -> str:
        ingestion = (self.store.ingestion(record.ingestion_id)
                     if record.ingestion_id is not None else None)
        return ingestion.file_name if ingestion else record.path

    def release(self, pipeline: str, version: int) -> DatasetActionResponse:
        """Let a held (or discarded) data set version train; the new-data policy runs as
        if it had just arrived."""
        record = self._dataset(pipeline, version)
        was = record.status
        if was not in ("held", "discarded") or not self.store.set_dataset_status(
                pipeline, version, "released",
                f"released by an operator (was {was}: {record.status_reason or 'no reason'})",
                only_from=("held", "discarded")):
            raise ApplianceError(
                "not_held",
                f"data set v{version} of `{pipeline}` is {was}, not held: it trains already"
                if was in ("active", "released") else
                f"data set v{version} of `{pipeline}` is {was}; only a held or discarded one "
                "can be released",
                {"pipeline": pipeline, "version": version, "status": was}, status=409,
            )
        started = bool(self.trainer.on_released(pipeline, version))
        then = ("training started" if started else
                "it trains with the next run (not enough new rows for retrain.min_new_rows, "
                "or a training is running)")
        message = (f"data set v{version} ({self._original(record)}, {record.rows:,} rows) "
                   f"released: {then}")
        self.events.emit("dataset_released", message, pipeline=pipeline,
                         dataset_version=version, was=was, training_started=started)
        return DatasetActionResponse(pipeline=pipeline, version=version, status="released",
                                     message=message, training_started=started)

    def discard(self, pipeline: str, version: int) -> DatasetActionResponse:
        """Keep a held data set version out of training for good. Nothing is deleted: the
        original stays in ``archive/``, the data set's file in ``datasets/``."""
        record = self._dataset(pipeline, version)
        if record.status != "held" or not self.store.set_dataset_status(
                pipeline, version, "discarded",
                f"discarded by an operator (was held: {record.status_reason or 'no reason'})",
                only_from=("held",)):
            raise ApplianceError(
                "not_held",
                f"data set v{version} of `{pipeline}` is {record.status}; only a held one "
                "can be discarded",
                {"pipeline": pipeline, "version": version, "status": record.status},
                status=409,
            )
        message = (f"data set v{version} discarded: it will never train. Nothing is deleted: "
                   f"the original {self._original(record)} stays in archive/{pipeline}/ and "
                   f"the data set in {record.path}; `appliance release {pipeline} {version}` "
                   "lets it train after all")
        self.events.emit("dataset_discarded", message, pipeline=pipeline,
                         dataset_version=version)
        return DatasetActionResponse(pipeline=pipeline, version=version, status="discarded",
                                     message=message, training_started=False)
