"""The training job: when a pipeline trains, one run at a time, retries, cancellation.

:class:`Trainer` takes the triggers (``new_data``, ``drift``, ``schedule``, ``manual``,
``retry``) and runs :meth:`appliance.models.ModelBuilder.train_and_gate` for them. At most
one training runs per pipeline; requests that arrive while one runs fold into a single
follow-up run. Jobs run on one worker thread under ``SCHED_IDLE``, so serving keeps its
core. A failed job is recorded and retried with backoff; stopping the daemon cancels a
running training between two boosting rounds, so nothing half-made is registered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from appliance.core import ApplianceError, Settings, StateDir, lower_to_idle
from appliance.models import LiveModels, ModelBuilder, Production, Registry, TrainingCancelled
from appliance.store import Events, IngestionRecord, ModelRecord, Store

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
        # Training runs under SCHED_IDLE (and LightGBM's threads, which it starts): an
        # answer waiting for a core takes it from training at once.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="train",
                                            initializer=lower_to_idle)
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._follow_up: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._closed = False
        self._cancel = threading.Event()
        self._futures: set[Future[None]] = set()
        # Set by the daemon: called as retry(pipeline, delay_seconds) after a failed job.
        self.schedule_retry: Callable[[str, float], None] | None = None
        self._tune: dict[str, int] = {}  # a search asked for with the next run (--tune N)
        # What serves (promotion, rollback) and one training run, for this job to drive.
        self.production = Production(store, registry, events, live)
        self.builder = ModelBuilder(state, store, registry, events, settings, self.production)

    # --- triggers ------------------------------------------------------------------------

    def on_ingested(self, pipeline: str, record: IngestionRecord) -> None:
        """New data: retrain when enough rows arrived since the data the newest model saw.
        A pipeline with no model in production trains on whatever data it has: the
        threshold is about *re*training, and an operator expects the first file to serve."""
        if self.store.production_model(pipeline) is None:
            self.request(pipeline, "new_data")
            return
        seen = self.last_trained_dataset(pipeline)
        new_rows = self.store.rows_since(pipeline, seen)
        if new_rows >= self.settings.pipeline(pipeline).retrain.min_new_rows:
            self.request(pipeline, "new_data")

    def on_released(self, pipeline: str, version: int) -> bool:
        """A held data set version was released: the new-data policy, as if it had just
        arrived (its rows count as new even when later versions trained meanwhile).
        Returns whether a training run started."""
        if self.store.production_model(pipeline) is None:
            return self.request(pipeline, "new_data")
        seen = self.last_trained_dataset(pipeline)
        new_rows = self.store.rows_since(pipeline, seen)
        released = self.store.dataset(pipeline, version)
        if released is not None and version <= seen:
            new_rows += released.rows
        if new_rows >= self.settings.pipeline(pipeline).retrain.min_new_rows:
            return self.request(pipeline, "new_data")
        return False

    def on_drift(self, pipeline: str) -> bool:
        """Drift: retrain when the pipeline asks for it and there is labelled data newer
        than what the production model was trained on."""
        if not self.settings.pipeline(pipeline).retrain.on_drift:
            return False
        production = self.store.production_model(pipeline)
        seen = production.lineage.get("max_dataset_version", 0) if production else 0
        if self.store.rows_since(pipeline, seen) <= 0:
            log.info("drift_retrain_skipped pipeline=%s: no labelled data newer than the "
                     "production model", pipeline)
            return False
        return self.request(pipeline, "drift")

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
            future = self._executor.submit(self._loop, pipeline, trigger)
            self._futures.add(future)
        future.add_done_callback(lambda f, p=pipeline: self._forget(f, p))
        return True

    def _forget(self, future: Future[None], pipeline: str) -> None:
        with self._lock:
            self._futures.discard(future)
            if future.cancelled():  # never started: stop() cancelled it
                self._running.discard(pipeline)

    def busy(self, pipeline: str) -> bool:
        with self._lock:
            return pipeline in self._running

    def shutdown(self, wait: bool = True) -> None:
        """Stop: queued runs are dropped, a running training is cancelled at its next
        boosting round (recorded as cancelled), and with ``wait`` this returns once the
        worker is idle."""
        with self._lock:
            self._closed = True
            self._follow_up.clear()
        self._cancel.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def stop(self) -> None:
        """Take no more jobs, drop queued ones and cancel a running training (it stops at
        its next boosting round). Returns at once; :meth:`join` waits."""
        self._cancel.set()
        self.shutdown(wait=False)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the jobs to end; True when none is left."""
        with self._lock:
            futures = set(self._futures)
        _, pending = wait_futures(futures, timeout=timeout)
        return not pending

    def train_and_gate(self, pipeline: str, trigger: str,
                       tune_trials: int | None = None) -> ModelRecord:
        """One run of the job: train, gate, register, promote (stops when cancelled)."""
        return self.builder.train_and_gate(pipeline, trigger, tune_trials=tune_trials,
                                           should_stop=self._cancel.is_set)

    # --- the job -------------------------------------------------------------------------

    def _loop(self, pipeline: str, trigger: str) -> None:
        while True:
            try:
                self._run_once(pipeline, trigger)
            except Exception:
                # Even the job's own record could not be written (SQLite on a full disk):
                # logged, and the pipeline is not left marked busy for ever.
                log.exception("training_job_unrecorded pipeline=%s", pipeline)
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
        except TrainingCancelled as err:
            self.store.finish_job(job, "cancelled", error=err.message)
            self.events.emit("training_cancelled", err.message, pipeline=pipeline,
                             level="warning", job=job)
        except Exception as exc:  # a failed job is recorded; it never stops the daemon
            if isinstance(exc, ApplianceError):
                message, code = exc.message, exc.code
            else:
                log.exception("training_crashed pipeline=%s", pipeline)
                message, code = f"{type(exc).__name__}: {exc}", "crash"
            self.store.finish_job(job, "failed", error=message)
            self.events.emit("training_failed", message, pipeline=pipeline, level="error",
                             code=code, job=job)
            self._retry_later(pipeline)
        else:
            self._failures.pop(pipeline, None)
            self.store.finish_job(job, "succeeded", model_version=record.version)

    def _retry_later(self, pipeline: str) -> None:
        jobs = self.settings.jobs
        attempt = self._failures.get(pipeline, 0) + 1
        if attempt > jobs.retry_attempts or self.schedule_retry is None or self._closed:
            self._failures.pop(pipeline, None)
            if jobs.retry_attempts:
                log.warning("training_gave_up pipeline=%s attempts=%d", pipeline, attempt - 1)
            return
        self._failures[pipeline] = attempt
        delay = jobs.retry_backoff_seconds * 2 ** (attempt - 1)
        self.events.emit("training_retry_scheduled",
                         f"retry {attempt} of {jobs.retry_attempts} in {delay:g}s",
                         pipeline=pipeline, level="warning", attempt=attempt, delay_s=delay)
        self.schedule_retry(pipeline, delay)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and shutdown: wait until no job is queued or running."""
        done: Future[None] = self._executor.submit(lambda: None)
        try:
            done.result(timeout=timeout)
        except Exception:
            return False
        return not self._running
