"""Training jobs: when to retrain, and the job that gathers data, trains, registers and
promotes through the gate.

At most one training runs per pipeline; a request that arrives while one runs is folded
into a single follow-up run. Jobs run on one worker thread, so serving keeps its core.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.events import Events
from appliance.predictor import LiveModels
from appliance.registry import Registry, library_versions
from appliance.statedir import StateDir
from appliance.store import IngestionRecord, ModelRecord, Store, now_iso
from appliance.train import Source, decide, load_training_data, train, training_threads

log = logging.getLogger("appliance.scheduler")


class Trainer:
    def __init__(self, state: StateDir, store: Store, registry: Registry, events: Events,
                 settings: Settings, live: LiveModels) -> None:
        self.state = state
        self.store = store
        self.registry = registry
        self.events = events
        self.settings = settings
        self.live = live
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="train")
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._follow_up: dict[str, str] = {}
        self._closed = False
        self._tune: dict[str, int] = {}  # a search asked for with the next run (--tune N)
        self._promote_lock = threading.Lock()

    # --- triggers ------------------------------------------------------------------------

    def on_ingested(self, pipeline: str, record: IngestionRecord) -> None:
        """New data: retrain when enough rows arrived since the data the newest model saw."""
        seen = self.last_trained_dataset(pipeline)
        new_rows = self.store.rows_since(pipeline, seen)
        if new_rows >= self.settings.pipeline(pipeline).retrain.min_new_rows:
            self.request(pipeline, "new_data")

    def last_trained_dataset(self, pipeline: str) -> int:
        models = self.store.models(pipeline)
        if not models:
            return 0
        return max((m.lineage.get("max_dataset_version", 0) for m in models), default=0)

    def request(self, pipeline: str, trigger: str, tune_trials: int | None = None) -> bool:
        """Ask for a training run; returns False when it was folded into a later run.

        ``tune_trials`` asks that run for a hyperparameter search of that many trials."""
        with self._lock:
            if self._closed:
                return False
            if tune_trials is not None:
                self._tune[pipeline] = tune_trials
            if pipeline in self._running:
                self._follow_up[pipeline] = trigger
                return False
            self._running.add(pipeline)
        self._executor.submit(self._loop, pipeline, trigger)
        return True

    def busy(self, pipeline: str) -> bool:
        with self._lock:
            return pipeline in self._running

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            self._follow_up.clear()
        self._executor.shutdown(wait=wait, cancel_futures=True)

    # --- the job -------------------------------------------------------------------------

    def _loop(self, pipeline: str, trigger: str) -> None:
        while True:
            self._run_once(pipeline, trigger)
            with self._lock:
                follow = self._follow_up.pop(pipeline, None)
                if follow is None or self._closed:
                    self._running.discard(pipeline)
                    return
                trigger = follow

    def _run_once(self, pipeline: str, trigger: str) -> None:
        job = self.store.start_job(pipeline, "train", trigger)
        self.events.emit("training_started", f"training ({trigger})", pipeline=pipeline,
                         trigger=trigger, job=job)
        with self._lock:
            tune = self._tune.pop(pipeline, None)
        try:
            record = self.train_and_gate(pipeline, trigger, tune_trials=tune)
        except ApplianceError as err:
            self.store.finish_job(job, "failed", error=err.message)
            self.events.emit("training_failed", err.message, pipeline=pipeline, level="error",
                             code=err.code, job=job)
        except Exception as exc:  # a failed job is recorded; it never stops the daemon
            log.exception("training_crashed pipeline=%s", pipeline)
            self.store.finish_job(job, "failed", error=f"{type(exc).__name__}: {exc}")
            self.events.emit("training_failed", f"{type(exc).__name__}: {exc}",
                             pipeline=pipeline, level="error", job=job)
        else:
            self.store.finish_job(job, "succeeded", model_version=record.version)

    def train_and_gate(self, pipeline: str, trigger: str,
                       tune_trials: int | None = None) -> ModelRecord:
        """Train on the pipeline's data window, put the candidate through the gate, register
        it with its lineage and the gate's verdict, and promote it when it passed."""
        started = time.monotonic()
        settings = self.settings.pipeline(pipeline)
        ts = self.settings.train
        datasets = self.store.datasets(pipeline)
        data = load_training_data(
            [Source(d.version, self.state.root / d.path, d.rows) for d in datasets], settings)
        loaded_s = time.monotonic() - started
        trials = tune_trials if tune_trials is not None else (
            settings.train.tune_trials if settings.train.tune_trials is not None
            else ts.tune_trials)
        seconds = settings.train.tune_seconds or ts.tune_seconds
        candidate = train(data.frame, settings, ts, tune_trials=trials, tune_seconds=seconds)
        rows = data.frame.height
        del data.frame
        min_improvement = (settings.train.min_improvement
                           if settings.train.min_improvement is not None
                           else ts.min_improvement)
        decision = decide(candidate, self.live.get(pipeline), min_improvement,
                          champion_z=ts.champion_z, baseline_z=ts.baseline_z,
                          threads=training_threads(ts.threads))
        lineage = self._lineage(trigger, datasets, data, rows, candidate, loaded_s)
        lineage["gate"] = {**(decision.details or {}), "reason": decision.reason}
        record = self.registry.register(pipeline, candidate, lineage, extra={
            "gate": lineage["gate"], "champion_metrics": decision.champion_metrics,
        })
        self.store.set_pipeline_task(pipeline, candidate.spec.task)
        tuned = (f", tuned over {candidate.tuning['trials_completed']} trials"
                 if candidate.tuning else "")
        self.events.emit(
            "trained",
            f"v{record.version} trained on {rows} rows in {candidate.seconds:.1f}s{tuned}",
            pipeline=pipeline, version=record.version, metrics=candidate.metrics,
        )
        if decision.promote:
            try:
                self.promote(pipeline, record.version, decision.reason)
            except ApplianceError as err:
                self.registry.reject(pipeline, record.version, f"not loadable: {err.message}")
                raise
        else:
            self.registry.reject(pipeline, record.version, decision.reason)
            self.events.emit("not_promoted", f"v{record.version}: {decision.reason}",
                             pipeline=pipeline, version=record.version)
        return self.store.model(pipeline, record.version) or record

    def _lineage(self, trigger: str, datasets: list[Any], data: Any, rows: int,
                 candidate: Any, loaded_s: float) -> dict[str, Any]:
        """What a model was made from and how: enough to redo it, or to explain it."""
        used = data.rows_used
        sources = []
        for d in datasets:
            if not used.get(d.version):
                continue
            ingestion = self.store.ingestion(d.ingestion_id) if d.ingestion_id else None
            sources.append({
                "version": d.version, "ingestion_id": d.ingestion_id,
                "file_name": ingestion.file_name if ingestion else None,
                "sha256": d.sha256, "rows": d.rows, "rows_used": used[d.version],
                "path": d.path,
            })
        return {
            "trigger": trigger,
            "datasets": sources,
            "max_dataset_version": max(d.version for d in datasets),
            "rows": rows,
            "window": data.window,
            "split": candidate.split,
            "train_rows": candidate.train_rows,
            "valid_rows": candidate.valid_rows,
            "task": candidate.spec.task,
            "task_reason": candidate.task_reason,
            "params": candidate.params,
            "best_iteration": candidate.best_iteration,
            "tuning": {k: v for k, v in candidate.tuning.items() if k != "history"}
            if candidate.tuning else None,
            "versions": library_versions(),
            "trained_at": now_iso(),
            "load_seconds": round(loaded_s, 3),
            "training_seconds": candidate.seconds,
        }

    def promote(self, pipeline: str, version: int, reason: str) -> int | None:
        """Load (verifying its hash), then make ``version`` production and serve it.

        A model that fails to load is never promoted: the serving one stays, and a
        ``model_load_failed`` event says why."""
        try:
            loaded = self.registry.load(pipeline, version)
        except ApplianceError as err:
            if err.code != "unknown_model":
                self.events.emit("model_load_failed", err.message, pipeline=pipeline,
                                 level="error", version=version, code=err.code)
            raise
        with self._promote_lock:
            self.registry.promote(pipeline, version, reason)
            old = self.live.swap(loaded)
        self.events.emit("promoted", f"v{version} is production: {reason}", pipeline=pipeline,
                         version=version, previous=old.version if old else None)
        return old.version if old else None

    def fall_back(self, pipeline: str, failed: int, why: str) -> int | None:
        """The production version can't be loaded (at start): serve the newest version
        that was production before it and still loads, and record why. Returns it."""
        earlier = sorted(
            (m for m in self.store.models(pipeline)
             if m.version != failed and m.promoted_at is not None),
            key=lambda m: m.promoted_at or "", reverse=True,
        )
        for record in earlier:
            try:
                loaded = self.registry.load(pipeline, record.version)
            except ApplianceError as err:
                self.events.emit("model_load_failed", err.message, pipeline=pipeline,
                                 level="error", version=record.version, code=err.code)
                continue
            reason = f"automatic rollback: v{failed} could not be loaded ({why})"
            with self._promote_lock:
                self.registry.promote(pipeline, record.version, reason)
                self.registry.reject(pipeline, failed, f"could not be loaded: {why}")
                self.live.swap(loaded)
            self.events.emit("rolled_back", f"v{record.version} is production again: {reason}",
                             pipeline=pipeline, level="warning", version=record.version,
                             failed=failed)
            return record.version
        return None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and shutdown: wait until no job is queued or running."""
        done: Future[None] = self._executor.submit(lambda: None)
        try:
            done.result(timeout=timeout)
        except Exception:
            return False
        return not self._running

