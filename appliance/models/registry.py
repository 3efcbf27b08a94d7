"""Model versions on disk and their stages.

A version is ``models/<pipeline>/<version>/`` with ``model.txt`` (LightGBM's text format)
and ``model.json`` (task, features and encodings, metrics, params, lineage, library
versions). Both are written under a temporary name, flushed and renamed, and their SHA-256
is kept in SQLite; loading checks the hashes before LightGBM parses anything, because
LightGBM aborts the whole process on some truncated model files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import threading
from pathlib import Path
from typing import Any

import lightgbm as lgb
import msgspec
import numpy as np
import polars as pl

from appliance import __version__
from appliance.core import ApplianceError, StateDir, fsync_dir
from appliance.features import FeatureSpec
from appliance.models.holdout import HOLDOUT_FILE, holdout_file, holdout_sample
from appliance.models.predictor import LoadedModel
from appliance.models.train import Candidate
from appliance.store import ModelRecord, Store, now_iso

TMP_PREFIX = ".tmp-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def library_versions() -> dict[str, str]:
    """The versions a model was trained with, for its lineage."""
    out = {"appliance": __version__, "lightgbm": lgb.__version__, "polars": pl.__version__,
           "numpy": np.__version__, "msgspec": msgspec.__version__,
           "python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["optuna"] = version("optuna")
    except Exception:
        pass
    return out


class Registry:
    def __init__(self, state: StateDir, store: Store) -> None:
        self.state = state
        self.store = store
        # A version number is taken, written and recorded under this lock: a training and
        # an import registering at once never pick the same number.
        self._lock = threading.RLock()

    def pipeline_root(self, pipeline: str) -> Path:
        return self.state.pipeline_dir(self.state.models, pipeline)

    def cleanup(self) -> list[Path]:
        """Remove what a crash left half-written: temp dirs, and version dirs SQLite never
        registered. Returns what was removed."""
        removed = []
        if not self.state.models.exists():
            return removed
        for pipe_dir in self.state.models.iterdir():
            if not pipe_dir.is_dir():
                continue
            known = self.store.model_versions(pipe_dir.name)
            for child in pipe_dir.iterdir():
                stale = child.name.startswith(TMP_PREFIX) or (
                    child.name.isdigit() and int(child.name) not in known
                )
                if stale:
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child)
        return removed

    def register(self, pipeline: str, candidate: Candidate, lineage: dict[str, Any],
                 extra: dict[str, Any] | None = None, *,
                 holdout_max_rows: int = 20_000, timestamp: str | None = None
                 ) -> ModelRecord:
        """Write a candidate as the pipeline's next version and record it as a candidate.

        ``extra`` adds keys to model.json (the gate's verdict, say). The version's held-out
        rows (at most ``holdout_max_rows``) are kept beside it (``holdout.parquet``), with
        their time range in the ``timestamp`` column."""
        with self._lock:
            return self._register(pipeline, candidate, lineage, extra, holdout_max_rows,
                                  timestamp)

    def _register(self, pipeline: str, candidate: Candidate, lineage: dict[str, Any],
                  extra: dict[str, Any] | None, holdout_max_rows: int,
                  timestamp: str | None) -> ModelRecord:
        root = self.pipeline_root(pipeline)
        version = self._next_version(pipeline, root)
        model_bytes = (candidate.model_text or candidate.booster.model_to_string()).encode()
        holdout, holdout_info = holdout_file(
            holdout_sample(candidate.valid_frame, holdout_max_rows, seed=version),
            candidate.valid_rows, candidate.y_train_prior, timestamp)
        meta = {
            "pipeline": pipeline,
            "version": version,
            "created_at": now_iso(),
            "task": candidate.spec.task,
            "task_reason": candidate.task_reason,
            "spec": msgspec.to_builtins(candidate.spec),
            "params": candidate.params,
            "best_iteration": candidate.best_iteration,
            "metrics": candidate.metrics,
            "baseline_metrics": candidate.baseline,
            "feature_importance": candidate.importance,
            # LightGBM's own name of each input column, in the order of spec's columns
            # (the raw names may hold characters LightGBM refuses).
            "lightgbm_feature_names": candidate.booster.feature_name(),
            "train_rows": candidate.train_rows,
            "valid_rows": candidate.valid_rows,
            "training_seconds": candidate.seconds,
            "lineage": lineage,
            "reference": candidate.reference,
            "versions": library_versions(),
            "primary_metric": candidate.metric or None,
            "split": candidate.split or None,
            "tuning": candidate.tuning,
            "holdout": holdout_info,
        }
        meta.update(extra or {})
        return self._write_version(pipeline, root, version, model_bytes, meta,
                                   {HOLDOUT_FILE: holdout}, candidate.spec.task,
                                   dict(candidate.metrics), lineage)

    def register_files(self, pipeline: str, model_bytes: bytes, meta: dict[str, Any],
                       lineage: dict[str, Any]) -> ModelRecord:
        """Register a model made elsewhere (an imported bundle, a bare LightGBM file) as
        the pipeline's next version, a candidate: ``meta`` is its model.json, given this
        box's pipeline name and version number."""
        with self._lock:
            root = self.pipeline_root(pipeline)
            version = self._next_version(pipeline, root)
            meta = {**meta, "pipeline": pipeline, "version": version, "lineage": lineage}
            return self._write_version(pipeline, root, version, model_bytes, meta, {},
                                       meta["task"], dict(meta.get("metrics") or {}),
                                       lineage)

    def _next_version(self, pipeline: str, root: Path) -> int:
        on_disk = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
        return max([self.store.max_model_version(pipeline), *on_disk]) + 1

    def _write_version(self, pipeline: str, root: Path, version: int, model_bytes: bytes,
                       meta: dict[str, Any], others: dict[str, bytes], task: str,
                       metrics: dict[str, Any], lineage: dict[str, Any]) -> ModelRecord:
        tmp = root / f"{TMP_PREFIX}{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        meta_bytes = json.dumps(meta, indent=2, default=str).encode()
        final = root / str(version)
        try:
            _write_synced(tmp / "model.txt", model_bytes)
            _write_synced(tmp / "model.json", meta_bytes)
            for name, data in others.items():
                _write_synced(tmp / name, data)
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(root)
        except OSError as exc:
            # Nothing half-written stays behind (a crash leaves it to cleanup()).
            shutil.rmtree(tmp, ignore_errors=True)
            if final.exists() and version not in self.store.model_versions(pipeline):
                shutil.rmtree(final, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ApplianceError(
                    "disk_full",
                    f"v{version} of `{pipeline}` could not be written: the state directory's "
                    "disk is full; nothing was registered. Free some space, then retrain",
                    {"pipeline": pipeline, "version": version}, status=507,
                ) from None
            raise
        return self.store.add_model(
            pipeline=pipeline, version=version, task=task,
            path=str(final.relative_to(self.state.root)),
            model_sha256=hashlib.sha256(model_bytes).hexdigest(),
            meta_sha256=hashlib.sha256(meta_bytes).hexdigest(),
            metrics=metrics, lineage=lineage,
        )

    def files(self, pipeline: str, version: int) -> dict[str, bytes]:
        """A registered version's model.txt and model.json, checked against their hashes
        (for an export)."""
        return self._verified(pipeline, version, ("model.txt", "model.json"))

    def _verified(self, pipeline: str, version: int, names: tuple[str, ...]
                  ) -> dict[str, bytes]:
        """A registered version's files (``model.txt``, ``model.json``), read once and
        checked against the hashes recorded when it was registered."""
        record = self.store.model(pipeline, version)
        if record is None:
            raise ApplianceError(
                "unknown_model", f"pipeline `{pipeline}` has no model version {version}",
                {"pipeline": pipeline, "version": version}, status=404,
            )
        folder = self.state.root / record.path
        hashes = {"model.txt": record.model_sha256, "model.json": record.meta_sha256}
        files = {name: hashes[name] for name in names}
        content: dict[str, bytes] = {}
        for name, expected in files.items():
            path = folder / name
            shown = f"{record.path}/{name}"
            # Read once and hash those bytes: what is parsed is exactly what was checked.
            try:
                content[name] = path.read_bytes()
            except OSError as exc:
                raise ApplianceError(
                    "model_unreadable",
                    f"v{version} of `{pipeline}` can't be read ({shown}: {exc.strerror}); "
                    "it will not be served",
                    {"pipeline": pipeline, "version": version, "file": shown}, status=409,
                ) from None
            if hashlib.sha256(content[name]).hexdigest() != expected:
                raise ApplianceError(
                    "model_corrupt",
                    f"v{version} of `{pipeline}` is damaged: {shown} does not match the hash "
                    "recorded when it was registered; it will not be served",
                    {"pipeline": pipeline, "version": version, "file": shown}, status=409,
                )
        return content

    def load(self, pipeline: str, version: int) -> LoadedModel:
        """Verify a registered version's files against their hashes, then load it."""
        content = self._verified(pipeline, version, ("model.txt", "model.json"))
        try:
            meta = json.loads(content["model.json"])
            booster = lgb.Booster(model_str=content["model.txt"].decode())
            spec = msgspec.convert(meta["spec"], FeatureSpec)
            model = LoadedModel(pipeline=pipeline, version=version, booster=booster,
                                spec=spec, meta=meta)
            # Warm it: the first call of each path allocates LightGBM's predictor.
            model.warm()
        except ApplianceError:
            raise
        except Exception as exc:  # matches its hash, yet unusable: it isn't served
            raise ApplianceError(
                "model_unusable",
                f"v{version} of `{pipeline}` can't be loaded ({type(exc).__name__}: {exc}); "
                "it will not be served",
                {"pipeline": pipeline, "version": version}, status=409,
            ) from None
        return model

    def load_booster(self, pipeline: str, version: int
                     ) -> tuple[lgb.Booster, FeatureSpec, dict[str, Any]]:
        """A registered version's booster, features and model.json, its hashes checked,
        for scoring off the serving path (no warm-up, no single-row set-up)."""
        content = self._verified(pipeline, version, ("model.txt", "model.json"))
        try:
            meta = json.loads(content["model.json"])
            booster = lgb.Booster(model_str=content["model.txt"].decode())
            return booster, msgspec.convert(meta["spec"], FeatureSpec), meta
        except Exception as exc:
            raise ApplianceError(
                "model_unusable",
                f"v{version} of `{pipeline}` can't be loaded ({type(exc).__name__}: {exc})",
                {"pipeline": pipeline, "version": version}, status=409,
            ) from None

    def promote(self, pipeline: str, version: int, decision: str) -> None:
        self.store.set_production(pipeline, version, decision)

    def reject(self, pipeline: str, version: int, decision: str) -> None:
        self.store.set_model_stage(pipeline, version, "rejected", decision)
