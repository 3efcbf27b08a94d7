"""Training jobs and the schedule that starts them.

:class:`Trainer` runs the retraining job (gather the data, train, register, promote through
the gate). At most one training runs per pipeline; requests that arrive while one runs fold
into a single follow-up run. Jobs run on one worker thread, so serving keeps its core. A
failed job is recorded and retried with backoff; stopping the daemon cancels a running
training between two boosting rounds, so nothing half-made is registered.

:class:`JobScheduler` is APScheduler inside the daemon: the per-pipeline cron retraining and
every periodic job (registered by the other parts with :meth:`JobScheduler.every`), rebuilt
from the config at start and on reload.

Triggers recorded on each job: ``new_data``, ``drift``, ``schedule``, ``manual``, ``retry``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from appliance.api_types import ScheduledJob
from appliance.core.config import Settings, cron_trigger
from appliance.core.errors import ApplianceError
from appliance.core.statedir import StateDir
from appliance.core.threads import lower_to_idle
from appliance.models.predictor import LiveModels
from appliance.models.registry import Registry, library_versions
from appliance.models.train import (
    Source,
    TrainingCancelled,
    decide,
    load_training_data,
    train,
    training_threads,
)
from appliance.store.database import IngestionRecord, ModelRecord, Store, now_iso
from appliance.store.events import Events

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
        # The feature store, when feature sets or derived features are configured.
        self.features: Any = None
        # One promotion at a time, so the production stage in SQLite and the served model
        # can't be left disagreeing by two promotions racing.
        self._promote_lock = threading.Lock()

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

    def train_and_gate(self, pipeline: str, trigger: str,
                       tune_trials: int | None = None) -> ModelRecord:
        """Train on the pipeline's data window, put the candidate through the gate, register
        it with its lineage and the gate's verdict, and promote it when it passed."""
        started = time.monotonic()
        self._check_disk(pipeline)
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
        serving: dict[str, Any] = {}
        if self.features is not None and (settings.join or settings.derived):
            data.frame, serving = self.features.prepare(data.frame, settings)
        candidate = train(data.frame, settings, ts, tune_trials=trials, tune_seconds=seconds,
                          should_stop=self._cancel.is_set)
        if serving:
            candidate.spec.joins = serving["joins"]
            candidate.spec.derived = serving["derived"]
            candidate.spec.derived_inputs = serving["derived_inputs"]
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

    def _check_disk(self, pipeline: str) -> None:
        """Refuse to train while the state directory's disk is below the free-space floor
        that also holds files in the inbox (``ingest.min_free_mb``): a model written there
        could fill the disk SQLite needs."""
        floor_mb = self.settings.ingest.min_free_mb
        try:
            free = shutil.disk_usage(self.state.root).free
        except OSError:
            return
        if free < floor_mb * 1024 * 1024:
            raise ApplianceError(
                "disk_full",
                f"training refused: the state directory's disk has {free / 1e6:.0f} MB free, "
                f"below ingest.min_free_mb = {floor_mb}; free some space (old files in "
                "archive/ or rejected/, say), then retrain or drop new data",
                {"free_bytes": free, "min_free_mb": floor_mb}, status=507,
            )

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



class JobScheduler:
    """APScheduler on the daemon's event loop: cron retraining and the periodic jobs.

    Jobs only *start* work here: training goes through :meth:`Trainer.request` (its own
    worker thread), and periodic jobs are plain functions that APScheduler runs in the
    loop's thread pool, so the event loop never waits for them.
    """

    def __init__(self, trainer: Trainer, settings: Settings) -> None:
        self.trainer = trainer
        self.settings = settings
        self._aps = AsyncIOScheduler(job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 300,
        })
        self._periodic: dict[str, tuple[str, Callable[[], Any], float, str | None]] = {}
        self._at_start: dict[str, bool] = {}
        trainer.schedule_retry = self.retry

    def every(self, job_id: str, name: str, func: Callable[[], Any], seconds: float,
              pipeline: str | None = None, at_start: bool = False) -> None:
        """Register a periodic job (before or after start); ``at_start`` also runs it once
        as soon as the scheduler starts."""
        self._periodic[job_id] = (name, func, seconds, pipeline)
        self._at_start[job_id] = at_start
        if self._aps.running:
            self._add_periodic(job_id)

    def _add_periodic(self, job_id: str) -> None:
        name, func, seconds, _ = self._periodic[job_id]
        first = {"next_run_time": datetime.now(UTC)} if self._at_start.pop(job_id, False) else {}
        self._aps.add_job(self._guard(name, func), "interval", seconds=seconds, id=job_id,
                          name=name, replace_existing=True, **first)

    @staticmethod
    def _guard(name: str, func: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            try:
                return func()
            except Exception:  # a failing periodic job is logged; it runs again next time
                log.exception("periodic_job_failed job=%s", name)
                return None

        run.__name__ = name
        return run

    def start(self) -> None:
        """Start on the running event loop, with the jobs from the config."""
        self._aps.start()
        self.configure(self.settings)

    def configure(self, settings: Settings) -> None:
        """(Re)build every job from ``settings``; called at start and on config reload."""
        self.settings = settings
        self.trainer.settings = settings
        for job in self._aps.get_jobs():
            if job.id.startswith("retrain:"):
                job.remove()
        for pipeline, cfg in settings.pipelines.items():
            if cfg.retrain.cron:
                self._aps.add_job(
                    self.trainer.request, cron_trigger(cfg.retrain.cron),
                    args=[pipeline, "schedule"], id=f"retrain:{pipeline}",
                    name=f"retrain {pipeline}", replace_existing=True,
                )
        for job_id in self._periodic:
            self._add_periodic(job_id)

    def retry(self, pipeline: str, delay: float) -> None:
        """Run a training for ``pipeline`` again in ``delay`` seconds (thread-safe)."""
        when = datetime.now(UTC) + timedelta(seconds=delay)
        self._aps.add_job(self.trainer.request, "date", run_date=when,
                          args=[pipeline, "retry"], id=f"retry:{pipeline}",
                          name=f"retry training {pipeline}", replace_existing=True)

    def scheduled(self, pipeline: str | None = None) -> list[ScheduledJob]:
        """Jobs with their next run time; with ``pipeline``, its own and the box-wide ones."""
        out = []
        for job in self._aps.get_jobs() if self._aps.running else []:
            owner = self._owner(job.id)
            if pipeline is not None and owner not in (pipeline, None):
                continue
            nxt = job.next_run_time
            out.append(ScheduledJob(
                id=job.id, pipeline=owner, name=job.name, schedule=self._describe(job),
                next_run=nxt.astimezone(UTC).isoformat(timespec="seconds").replace(
                    "+00:00", "Z") if nxt else None,
            ))
        return sorted(out, key=lambda j: (j.next_run or "~", j.id))

    def _owner(self, job_id: str) -> str | None:
        if job_id.startswith(("retrain:", "retry:")):
            return job_id.split(":", 1)[1]
        entry = self._periodic.get(job_id)
        return entry[3] if entry else None

    def _describe(self, job: Any) -> str:
        if job.id.startswith("retrain:"):
            cfg = self.settings.pipeline(job.id.split(":", 1)[1])
            return f"cron {cfg.retrain.cron}"
        if job.id.startswith("retry:"):
            return "once, after a failed training"
        entry = self._periodic.get(job.id)
        return f"every {entry[2]:g}s" if entry else str(job.trigger)

    def shutdown(self) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=False)
