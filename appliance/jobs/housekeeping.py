"""Housekeeping: what keeps the state directory from growing for ever, and deleting a
pipeline.

:meth:`Housekeeping.apply_retention` runs at start and every 10 minutes, with the
``[retention]`` settings:

- events, records of finished jobs, and records of refused, duplicate and feedback files
  older than their age limit are removed (an accepted file's record lives as long as its
  data set: it is the data set's lineage);
- files in ``rejected/`` and ``archive/`` older than theirs (by the time they were moved
  there), never anything in ``inbox/`` or ``processing/``, and never through a link;
- model versions beyond the newest ``models_keep`` of a pipeline, but never its production
  version nor the one that was production before it (what a rollback goes back to);
- data set versions beyond the newest ``datasets_keep``, but only those no kept model was
  trained on, and only once a training has passed them by (a version newer than every
  model's data waits for its training). A feature set keeps every version: its history is
  what as-of joins read;
- a pipeline left holding nothing (a stray file in a new folder, once its records aged
  out) is forgotten, and its empty folders removed.

:meth:`Housekeeping.delete_pipeline` takes a pipeline away at an operator's word
(``appliance pipeline delete``, ``DELETE /v1/pipelines/{name}``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.api_types import PipelineDeleted
from appliance.core import PIPELINE_NAME, ApplianceError, Settings, StateDir
from appliance.jobs.training import Trainer
from appliance.models import LiveModels
from appliance.store import Events, Store

log = logging.getLogger("appliance.housekeeping")

DAY = 86400.0
INGEST_WAIT_SECONDS = 60.0  # how long a deletion waits for the file being ingested


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _size_of(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``, never following a link."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return 1, st.st_size
    files = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
    return files, size


def _remove(path: Path) -> tuple[int, int]:
    """Remove a file, a link (never what it points at) or a folder; (files, bytes)."""
    try:
        counted = _size_of(path)
    except FileNotFoundError:
        return 0, 0
    if _real_dir(path):
        shutil.rmtree(path)  # never follows a link inside (fd-based on Linux)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return counted


class Housekeeping:
    def __init__(self, state: StateDir, store: Store, events: Events, settings: Settings,
                 trainer: Trainer, live: LiveModels, ingest_lock: threading.Lock) -> None:
        self.state = state
        self.store = store
        self.events = events
        self.settings = settings
        self.trainer = trainer
        self.live = live
        self.ingest_lock = ingest_lock

    # --- retention -------------------------------------------------------------------------

    def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Remove what the ``[retention]`` settings no longer keep; returns how much went,
        per kind. ``now`` is for tests."""
        now = time.time() if now is None else now
        cfg = self.settings.retention
        store = self.store
        removed = {
            "events": store.delete_events_before(_iso(now - cfg.events_days * DAY))
            if cfg.events_days else 0,
            "jobs": store.delete_jobs_before(_iso(now - cfg.jobs_days * DAY))
            if cfg.jobs_days else 0,
            "ingestions": store.delete_ingestions_before(_iso(now - cfg.ingestions_days * DAY))
            if cfg.ingestions_days else 0,
            "rejected_files": self._expire_files(self.state.rejected, cfg.rejected_days, now),
            "archived_files": self._expire_files(self.state.archive, cfg.archive_days, now),
            "models": 0, "datasets": 0, "pipelines": 0,
        }
        for pipeline in store.pipelines():
            if self.trainer.busy(pipeline.name):
                continue  # its training reads the versions: next time
            models, datasets = self._expire_versions(pipeline.name)
            removed["models"] += models
            removed["datasets"] += datasets
        removed["pipelines"] = self._forget_empty_pipelines()
        if any(removed.values()):
            log.info("retention %s", " ".join(f"{k}={v}" for k, v in removed.items() if v))
        return removed

    def _expire_files(self, area: Path, days: float, now: float) -> int:
        """Remove what was moved into ``area/<pipeline>/`` more than ``days`` ago (its
        ctime: the move), never following a link."""
        if not days:
            return 0
        cutoff = now - days * DAY
        removed = 0
        for folder in self._pipeline_dirs(area):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_ctime >= cutoff:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
                except OSError as exc:
                    log.warning("retention_remove_failed path=%s error=%s", entry.path, exc)
        return removed

    @staticmethod
    def _pipeline_dirs(area: Path) -> list[Path]:
        try:
            return [p for p in sorted(area.iterdir()) if _real_dir(p)]
        except OSError:
            return []

    def _expire_versions(self, pipeline: str) -> tuple[int, int]:
        """Remove the model and data set versions retention no longer keeps; returns how
        many of each."""
        cfg = self.settings.retention
        models = self.store.model_lineages(pipeline)
        keep: set[int] = set()
        for m in models:
            if m["stage"] == "production":
                keep.add(int(m["version"]))
        before = sorted((m for m in models if m["stage"] != "production" and m["promoted_at"]),
                        key=lambda m: str(m["promoted_at"]))
        if before:
            keep.add(int(before[-1]["version"]))
        keep |= {int(m["version"]) for m in models[-cfg.models_keep:]}
        drop = [int(m["version"]) for m in models
                if int(m["version"]) not in keep]
        gone = self.store.delete_models(pipeline, drop)
        for version in drop:
            folder = self.state.models / pipeline / str(version)
            if _real_dir(folder):
                shutil.rmtree(folder, ignore_errors=True)
        if pipeline in self.settings.feature_sets:
            return gone, 0
        kept = [m for m in models if int(m["version"]) in keep]
        return gone, self._expire_datasets(pipeline, models, kept)

    def _expire_datasets(self, pipeline: str, models: list[dict[str, Any]],
                         kept: list[dict[str, Any]]) -> int:
        cfg = self.settings.retention
        versions = [d.version for d in self.store.datasets(pipeline)]
        if len(versions) <= cfg.datasets_keep:
            return 0
        # Data newer than every model's data waits for its training.
        trained = max((int(m["lineage"].get("max_dataset_version") or 0) for m in models),
                      default=0)
        used: set[int] = set()
        for m in kept:
            lineage = m["lineage"]
            sources = lineage.get("datasets")
            if isinstance(sources, list):
                used |= {d.get("version") for d in sources if isinstance(d, dict)}
            else:  # a lineage that doesn't list them: it may have used any version it saw
                upto = lineage.get("max_dataset_version") or versions[-1]
                used |= {v for v in versions if v <= upto}
        keep = set(versions[-cfg.datasets_keep:]) | used | {v for v in versions if v > trained}
        drop = [v for v in versions if v not in keep]
        paths = self.store.delete_datasets(pipeline, drop)
        folder = self.state.datasets / pipeline
        for rel in paths:
            path = self.state.root / rel
            if path.parent == folder:  # never anything outside datasets/<pipeline>/
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return len(paths)

    def _forget_empty_pipelines(self) -> int:
        """Forget pipelines that hold nothing any more and wait for nothing, and remove
        their empty folders; a declared pipeline or feature set stays."""
        settings = self.settings
        forgotten = 0
        for pipeline in self.store.pipelines():
            name = pipeline.name
            if name in settings.pipelines or name in settings.feature_sets:
                continue
            if any(self.store.pipeline_counts(name).values()):
                continue
            inbox = self.state.inbox / name
            if _real_dir(inbox) and any(inbox.iterdir()):
                continue  # files wait to be taken
            if not self.ingest_lock.acquire(blocking=False):
                return forgotten  # a file is being ingested: next time
            try:
                if not self.store.drop_empty_pipeline(name):
                    continue
            finally:
                self.ingest_lock.release()
            forgotten += 1
            for area in (self.state.inbox, self.state.processing, self.state.archive,
                         self.state.rejected, self.state.datasets, self.state.models):
                with contextlib.suppress(OSError):
                    if _real_dir(area / name):
                        os.rmdir(area / name)  # only when empty
            log.info("pipeline_forgotten pipeline=%s: it held nothing any more", name)
        return forgotten

    # --- deleting a pipeline -----------------------------------------------------------------

    def delete_pipeline(self, name: str, force: bool = False) -> PipelineDeleted:
        """Delete a pipeline: stop serving it, remove its rows (data sets, models,
        ingestions, jobs, events, predictions, monitoring) and its folders in every area.

        Refused (409, nothing deleted) while it trains, while it serves a model unless
        ``force``, and for a feature set declared in the config. Waits for a file being
        ingested (up to a minute). A pipeline declared in the config stays declared: it
        is listed again, with no data, until its section is removed."""
        settings = self.settings
        declared = name in settings.pipelines
        valid = PIPELINE_NAME.match(name) is not None   # never a path: `..`, `a/b`
        folder_exists = valid and any(
            os.path.lexists(area / name) for area in (self.state.inbox, self.state.archive,
                                                      self.state.rejected))
        if not valid or (self.store.pipeline(name) is None and not declared
                         and not folder_exists):
            raise ApplianceError(
                "unknown_pipeline", f"no pipeline `{name}` to delete", {"pipeline": name},
                status=404)
        if name in settings.feature_sets:
            raise ApplianceError(
                "feature_set_declared",
                f"`{name}` is a feature set declared in appliance.toml; remove its "
                f"[feature_sets.{name}] section (and the joins that use it), reload, then "
                "delete it", {"pipeline": name}, status=409)
        serving = self.live.get(name)
        production = self.store.production_model(name)
        if (serving is not None or production is not None) and not force:
            version = serving.version if serving is not None else production.version
            raise ApplianceError(
                "pipeline_serving",
                f"`{name}` serves model v{version}: clients predicting with it would get "
                "404 from now on. Delete it anyway with --force (force=true)",
                {"pipeline": name, "version": version}, status=409)
        if not self.trainer.forget(name):
            raise ApplianceError(
                "pipeline_training",
                f"`{name}` is training; wait for the job to end (appliance models {name}, "
                "the console's Jobs tab), then delete it", {"pipeline": name}, status=409)
        try:
            if not self.ingest_lock.acquire(timeout=INGEST_WAIT_SECONDS):
                raise ApplianceError(
                    "pipeline_busy",
                    f"a file is still being ingested after {INGEST_WAIT_SECONDS:.0f} s; "
                    f"try deleting `{name}` again in a while", {"pipeline": name}, status=409)
            try:
                counts = self.store.pipeline_counts(name)
                self.live.remove(name)
                self.store.delete_pipeline_rows(name)
                files = size = 0
                for area in (self.state.inbox, self.state.processing, self.state.archive,
                             self.state.rejected, self.state.datasets, self.state.models):
                    n, b = _remove(area / name)
                    files, size = files + n, size + b
            finally:
                self.ingest_lock.release()
        finally:
            self.trainer.release(name)
        message = (f"deleted `{name}`: {counts['datasets']} data set versions, "
                   f"{counts['models']} models, {counts['ingestions']} file records, "
                   f"{files} files ({size / 1e6:.1f} MB)")
        if declared:
            message += f"; it stays declared in appliance.toml ([pipelines.{name}])"
        self.events.emit("pipeline_deleted", message, pipeline=name, level="warning",
                         forced=force or None, **counts, files=files, bytes=size)
        return PipelineDeleted(pipeline=name, message=message, datasets=counts["datasets"],
                               models=counts["models"], ingestions=counts["ingestions"],
                               files=files, bytes=size, still_declared=declared)
