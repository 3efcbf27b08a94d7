"""The schedule that starts jobs: APScheduler inside the daemon.

:class:`JobScheduler` runs the per-pipeline cron retraining (through
:meth:`appliance.jobs.training.Trainer.request`) and every periodic job (registered by the
other parts with :meth:`JobScheduler.every`), rebuilt from the config at start and on
reload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from appliance.api_types import ScheduledJob
from appliance.core import Settings, cron_trigger
from appliance.jobs.training import Trainer

log = logging.getLogger("appliance.scheduler")


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
        self._aps.add_job(self.trainer.retry_due, "date", run_date=when,
                          args=[pipeline], id=f"retry:{pipeline}",
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
