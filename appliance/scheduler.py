"""Training jobs: when to retrain, and the job that gathers data, trains, registers and
promotes through the gate.

At most one training runs per pipeline; a request that arrives while one runs is folded
into a single follow-up run. Jobs run on one worker thread, so serving keeps its core.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.events import Events
from appliance.predictor import LiveModels
from appliance.registry import Registry
from appliance.statedir import StateDir
from appliance.store import IngestionRecord, ModelRecord, Store
from appliance.train import decide, read_datasets, train

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
        # One promotion at a time, so the production stage in SQLite and the served model
        # can't be left disagreeing by two promotions racing.
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

    def request(self, pipeline: str, trigger: str) -> bool:
        """Ask for a training run; returns False when it was folded into a later run."""
        with self._lock:
            if self._closed:
                return False
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
        try:
            record = self.train_and_gate(pipeline, trigger)
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

    def train_and_gate(self, pipeline: str, trigger: str) -> ModelRecord:
        datasets = self.store.datasets(pipeline)
        frame = read_datasets([self.state.root / d.path for d in datasets])
        settings = self.settings.pipeline(pipeline)
        candidate = train(frame, settings, self.settings.train)
        lineage = {
            "trigger": trigger,
            "datasets": [
                {"version": d.version, "rows": d.rows, "sha256": d.sha256,
                 "ingestion_id": d.ingestion_id}
                for d in datasets
            ],
            "max_dataset_version": max(d.version for d in datasets),
            "rows": frame.height,
        }
        record = self.registry.register(pipeline, candidate, lineage)
        self.store.set_pipeline_task(pipeline, candidate.spec.task)
        self.events.emit(
            "trained",
            f"v{record.version} trained on {frame.height} rows in {candidate.seconds:.1f}s",
            pipeline=pipeline, version=record.version, metrics=candidate.metrics,
        )
        decision = decide(candidate, self.live.get(pipeline),
                          self.settings.train.min_improvement)
        if decision.promote:
            self.promote(pipeline, record.version, decision.reason)
        else:
            self.registry.reject(pipeline, record.version, decision.reason)
            self.events.emit("not_promoted", f"v{record.version}: {decision.reason}",
                             pipeline=pipeline, version=record.version)
        return record

    def promote(self, pipeline: str, version: int, reason: str) -> int | None:
        """Load (verifying its hash), then make ``version`` production and serve it.

        A model that fails to load is never promoted: the serving one stays."""
        try:
            loaded = self.registry.load(pipeline, version)
        except ApplianceError as err:
            self.events.emit("model_load_failed", err.message, pipeline=pipeline,
                             level="error", version=version)
            raise
        with self._promote_lock:
            self.registry.promote(pipeline, version, reason)
            old = self.live.swap(loaded)
        self.events.emit("promoted", f"v{version} is production: {reason}", pipeline=pipeline,
                         version=version, previous=old.version if old else None)
        return old.version if old else None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and shutdown: wait until no job is queued or running."""
        done: Future[None] = self._executor.submit(lambda: None)
        try:
            done.result(timeout=timeout)
        except Exception:
            return False
        return not self._running

