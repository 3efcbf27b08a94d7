"""The training job: when a pipeline trains, one run at a time, retries, cancellation.

:class:`Trainer` takes the triggers (``new_data``, ``drift``, ``schedule``, ``manual``,
``retry``) and runs :meth:`appliance.models.ModelBuilder.train_and_gate` for them. At most
one training runs per pipeline; requests that arrive while one runs fold into a single
follow-up run. Jobs run on one worker thread under ``SCHED_IDLE``, so serving keeps its
core. A failed job is recorded and retried with backoff; stopping the daemon cancels a
running training between two boosting rounds, so nothing half-made is registered.

What is asked for is kept in SQLite (``training_requests``) until a run covers it: a run
that a stop, a crash or a power cut cut short, a follow-up, a retry waiting for its time
are all run again after a restart (:meth:`Trainer.resume`), and so is a pipeline with data
that no model has seen (its trigger was lost with the process). A pipeline whose retries
are spent is remembered as given up on its newest data: a restart does not train it again,
new data or an operator does.
"""

from __future__ import annotations

import logging
import threading
import time
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
        self._deleting: set[str] = set()  # pipelines being deleted: no new runs
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
        """New data: retrain when enough rows arrived since the data the newest model saw;
        not while a feature set the pipeline joins has no data yet (it trains when that
        data comes: :meth:`on_features_updated`)."""
        if not self.new_data_wanted(pipeline):
            return
        empty = self._empty_feature_sets(pipeline)
        if empty:
            self.events.emit(
                "training_waiting",
                f"new data waits for the feature set {', '.join(f'`{n}`' for n in empty)} "
                f"it joins, which has no data yet; it trains once a file arrives in "
                f"inbox/{empty[0]}/", pipeline=pipeline, feature_sets=empty)
            return
        self.request(pipeline, "new_data")

    def _empty_feature_sets(self, pipeline: str) -> list[str]:
        return [name for name in self.settings.pipeline(pipeline).join
                if name in self.settings.feature_sets
                and self.store.dataset_totals(name)[0] == 0]

    def new_data_wanted(self, pipeline: str) -> bool:
        """Whether the pipeline has data no model has seen, enough of it to train. A
        pipeline with no model in production trains on whatever new data it has: the
        threshold is about *re*training, and an operator expects the first file to serve."""
        seen = self.last_trained_dataset(pipeline)
        new_rows = self.store.rows_since(pipeline, seen)
        if new_rows <= 0:
            return False
        if self.store.production_model(pipeline) is None:
            return True
        return new_rows >= self.settings.pipeline(pipeline).retrain.min_new_rows

    def on_features_updated(self, pipelines: list[str]) -> list[str]:
        """A feature set got new data: each of ``pipelines`` (those joining it) whose new
        data waited for it trains now, and one that waits for a retry (its run may have
        failed for want of this very data) trains now, not at the retry's time. Returns the
        pipelines that started a run."""
        started = []
        for pipeline in pipelines:
            if self.busy(pipeline) or self._empty_feature_sets(pipeline):
                continue
            pending = self.store.training_request(pipeline)
            if pending is not None and pending.state == "pending":
                trigger = "retry"
            elif self.new_data_wanted(pipeline):  # its data waited for these features
                trigger = "new_data"
            else:
                continue
            if self.request(pipeline, trigger):
                started.append(pipeline)
        return started

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

        ``tune_trials`` asks that run for a hyperparameter search of that many trials. The
        request is kept in SQLite first, so a stop (even while closed), a crash or a power
        cut before a run covers it never drops it: the next start runs it."""
        with self._lock:
            if pipeline in self._deleting:
                return False
        try:
            self.store.request_training(pipeline, trigger, tune_trials)
        except Exception:  # a full disk: the run still goes ahead, it is only not kept
            log.exception("training_request_not_stored pipeline=%s", pipeline)
        with self._lock:
            if self._closed or pipeline in self._deleting:
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

    def retry_due(self, pipeline: str) -> bool:
        """A scheduled retry came due: run it if it is still wanted (a run since may have
        covered it, or the pipeline been deleted)."""
        pending = self.store.training_request(pipeline)
        if pending is None or pending.state != "pending":
            return False
        return self.request(pipeline, "retry")

    def resume(self) -> list[str]:
        """At start: run what a stop, a crash or a power cut left undone. A pending request
        runs now, a retry at its due time (as the attempt it was); a pipeline whose newest
        data no model has seen (the trigger was lost) trains, unless its retries gave up on
        that very data. Returns the pipelines resumed."""
        resumed = []
        requests = {r.pipeline: r for r in self.store.training_requests()}
        for r in requests.values():
            if r.state != "pending":
                continue
            with self._lock:
                if r.attempt:
                    self._failures[r.pipeline] = r.attempt
            wait = (r.due_at - time.time()) if r.due_at is not None else 0.0
            if wait > 0 and self.schedule_retry is not None:
                self.schedule_retry(r.pipeline, wait)
                message = (f"retry {r.attempt} of {self.settings.jobs.retry_attempts} of a "
                           f"training that failed before the restart, in {wait:.0f}s")
            else:
                self.request(r.pipeline, r.trigger, r.tune_trials)
                message = f"training ({r.trigger}) that the restart cut short runs again"
            self.events.emit("training_resumed", message, pipeline=r.pipeline,
                             trigger=r.trigger, attempt=r.attempt or None)
            resumed.append(r.pipeline)
        for record in self.store.pipelines():
            name = record.name
            if (name in requests and requests[name].state == "pending") or \
                    name in self.settings.feature_sets:
                continue
            gave_up = requests.get(name)
            newest = self.store.next_dataset_version(name) - 1
            if gave_up is not None and (gave_up.dataset_version or 0) >= newest:
                continue
            if self.new_data_wanted(name):
                self.request(name, "new_data")
                self.events.emit("training_resumed",
                                 f"data up to v{newest} that no model has seen: training",
                                 pipeline=name, trigger="new_data")
                resumed.append(name)
        return resumed

    def count_interrupted(self, pipelines: list[str]) -> None:
        """At start, before :meth:`resume`: each pipeline whose training the last process
        died in (a crash, the kernel's out-of-memory killer, a power cut, a stop that could
        not wait for it) has that run count as a failed attempt: retried after the backoff
        like any failure, and given up after ``jobs.retry_attempts`` (new data or an
        operator trains it again). A run that kills the daemon so stops restarting it."""
        jobs = self.settings.jobs
        for pipeline in dict.fromkeys(pipelines):
            pending = self.store.training_request(pipeline)
            if pending is None or pending.state != "pending":
                continue
            attempt = pending.attempt + 1
            if attempt > jobs.retry_attempts:
                self.store.give_up_training(pipeline, pending.seq,
                                            self.store.next_dataset_version(pipeline) - 1)
                self.events.emit(
                    "training_failed",
                    f"the daemon stopped during training {attempt} time(s) in a row (a "
                    "crash, out of memory, a power cut): given up on this data; new data or "
                    "`appliance train` runs it again (out of memory: train.window_rows "
                    "trains on fewer rows)", pipeline=pipeline, level="error",
                    code="interrupted", attempts=attempt)
                continue
            delay = self._backoff(attempt)
            self.store.schedule_training_retry(pipeline, attempt, time.time() + delay)
            self.events.emit(
                "training_failed",
                f"the daemon stopped during training (a crash, out of memory, a power cut): "
                f"retry {attempt} of {jobs.retry_attempts} in {delay:g}s",
                pipeline=pipeline, level="error", code="interrupted", attempt=attempt)

    def forget(self, pipeline: str) -> bool:
        """A pipeline is being deleted: drop its pending runs and retries, and take no new
        ones until :meth:`release`. False (and nothing dropped) while it trains."""
        with self._lock:
            if pipeline in self._running:
                return False
            self._deleting.add(pipeline)
            self._follow_up.pop(pipeline, None)
            self._failures.pop(pipeline, None)
            self._tune.pop(pipeline, None)
        self.store.forget_training_request(pipeline)
        return True

    def release(self, pipeline: str) -> None:
        """The deletion is over: a new pipeline of that name may train."""
        with self._lock:
            self._deleting.discard(pipeline)

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
        pending = self.store.training_request(pipeline)   # what this run covers
        seq = pending.seq if pending is not None else None
        job = self.store.start_job(pipeline, "train", trigger)
        self.events.emit("training_started", f"training ({trigger})", pipeline=pipeline,
                         trigger=trigger, job=job)
        with self._lock:
            tune = self._tune.pop(pipeline, None)
        try:
            record = self.train_and_gate(pipeline, trigger, tune_trials=tune)
        except TrainingCancelled as err:
            # The request stays in SQLite: the next start runs it again.
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
            self._retry_later(pipeline, seq)
        else:
            self._failures.pop(pipeline, None)
            self.store.finish_job(job, "succeeded", model_version=record.version)
            if seq is not None:
                self.store.finish_training_request(pipeline, seq)

    def _backoff(self, attempt: int) -> float:
        """The wait before retry ``attempt``: the backoff, doubled at each further one."""
        return self.settings.jobs.retry_backoff_seconds * 2 ** (attempt - 1)

    def _retry_later(self, pipeline: str, seq: int | None) -> None:
        jobs = self.settings.jobs
        attempt = self._failures.get(pipeline, 0) + 1
        if attempt > jobs.retry_attempts:
            self._failures.pop(pipeline, None)
            if jobs.retry_attempts:
                log.warning("training_gave_up pipeline=%s attempts=%d", pipeline, attempt - 1)
            if seq is not None:  # unless a newer request came meanwhile: that one runs
                self.store.give_up_training(pipeline, seq,
                                            self.store.next_dataset_version(pipeline) - 1)
            return
        self._failures[pipeline] = attempt
        delay = self._backoff(attempt)
        # Kept, with its time: stopped before it comes due, the daemon retries after a start.
        self.store.schedule_training_retry(pipeline, attempt, time.time() + delay)
        if self.schedule_retry is None or self._closed:
            return
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
