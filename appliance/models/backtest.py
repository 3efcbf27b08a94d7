"""The backtest: every kept version of a pipeline scored on the same rows.

Each version's own metrics are on its own held-out rows, so two versions' numbers
compare different data (a version trained after a drift is scored on harder rows and can
look worse although it is better). The backtest scores every version on one set of rows:
the held-out rows of the newest version that kept them (the newest data; no version
trained on them, as older ones were trained before those rows came), with each version's
gain over production there and its standard error (paired, as the gate computes it).

Loading every version is heavy: a comparison is computed off the event loop and kept
until a version is added or production changes.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import polars as pl

from appliance.api_types import ModelComparison, ModelScore
from appliance.core import ApplianceError, StateDir
from appliance.features import FeatureSpec, encode_target, to_matrix
from appliance.models import metrics as m
from appliance.models.holdout import read_holdout
from appliance.models.registry import Registry
from appliance.store import ModelRecord, Store, now_iso

# LightGBM threads for scoring: the backtest runs beside serving.
SCORE_THREADS = 1


class Backtests:
    def __init__(self, state: StateDir, store: Store, registry: Registry) -> None:
        self.state = state
        self.store = store
        self.registry = registry
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Any, dict[int, ModelScore], ModelComparison]] = {}

    def compare(self, pipeline: str) -> ModelComparison:
        """The comparison of ``pipeline``'s versions, computed once per set of versions
        and production version (their stages are read fresh)."""
        records = self.store.models(pipeline)
        production = next((r.version for r in records if r.stage == "production"), None)
        key = (tuple((r.version, r.model_sha256, r.meta_sha256) for r in records), production)
        with self._lock:
            cached = self._cache.get(pipeline)
            if cached is None or cached[0] != key:
                scores, result = self._compute(pipeline, records, production)
                cached = (key, scores, result)
                self._cache[pipeline] = cached
        _, scores, result = cached
        return ModelComparison(
            **{f: getattr(result, f) for f in result.__struct_fields__ if f != "scores"},
            scores=[ModelScore(**{**_fields(scores[r.version]), "stage": r.stage})
                    for r in records if r.version in scores])

    def _compute(self, pipeline: str, records: list[ModelRecord], production: int | None
                 ) -> tuple[dict[int, ModelScore], ModelComparison]:
        scores: dict[int, ModelScore] = {}
        loaded: dict[int, tuple[Any, FeatureSpec]] = {}
        source: tuple[int, dict[str, Any], pl.DataFrame] | None = None
        for r in records:  # newest first
            try:
                booster, spec, meta = self.registry.load_booster(pipeline, r.version)
            except ApplianceError as err:
                scores[r.version] = ModelScore(version=r.version, stage=r.stage,
                                               note=f"can't be loaded: {err.message}")
                continue
            loaded[r.version] = (booster, spec)
            if source is None and meta.get("holdout"):
                try:
                    rows = read_holdout(self.state.root / r.path, meta["holdout"],
                                        f"v{r.version} of `{pipeline}`")
                except ApplianceError:
                    continue
                source = (r.version, meta, rows)
        if source is None:
            return scores, ModelComparison(
                metric=None, rows_from_version=None, rows=0, production_version=production,
                note="no version kept its held-out rows yet (versions registered from this "
                     "release on keep them)", computed_at=now_iso())
        version, meta, rows = source
        spec = loaded[version][1]
        target = spec.target
        rows = rows.filter(pl.col(target).is_not_null())
        y = encode_target(rows.get_column(target), spec)
        task = spec.task
        metric = meta.get("primary_metric") or m.primary_metric(task)
        preds: dict[int, np.ndarray] = {}
        for v, (booster, vspec) in loaded.items():
            p = _predict(booster, vspec, spec, rows)
            if p is None:
                scores[v] = ModelScore(version=v, stage="", note=(
                    "can't score these rows (its task, classes or features differ)"))
            else:
                preds[v] = p
        reference = preds.get(production) if production is not None else None
        for v, p in preds.items():
            values = m.evaluate(task, y, p)
            gain = se = None
            if reference is not None and v != production:
                c = m.compare(task, metric, y, p, reference)
                gain, se = c.gain, c.se
            scores[v] = ModelScore(version=v, stage="", metrics=values,
                                   value=values.get(metric), vs_production=gain,
                                   standard_error=se)
        return scores, ModelComparison(
            metric=metric, rows_from_version=version, rows=rows.height,
            first_timestamp=meta["holdout"].get("first"),
            last_timestamp=meta["holdout"].get("last"), production_version=production,
            baseline=_baseline(task, y, meta, len(spec.classes or [])),
            computed_at=now_iso())


def _fields(score: ModelScore) -> dict[str, Any]:
    return {f: getattr(score, f) for f in score.__struct_fields__}


def _predict(booster: Any, spec: FeatureSpec, rows_spec: FeatureSpec,
             rows: pl.DataFrame) -> np.ndarray | None:
    if spec.task != rows_spec.task or spec.classes != rows_spec.classes:
        return None
    try:
        x = to_matrix(rows, spec)
    except ApplianceError:
        return None
    return np.asarray(booster.predict(x, num_threads=SCORE_THREADS))


def _baseline(task: str, y: np.ndarray, meta: dict[str, Any], k: int
              ) -> dict[str, float] | None:
    prior = (meta.get("holdout") or {}).get("baseline_prior")
    if prior is None or len(y) == 0:
        return None
    p = (np.tile(np.asarray(prior, dtype=np.float64), (len(y), 1)) if task == "multiclass"
         else np.full(len(y), float(prior)))
    if task == "multiclass" and p.shape[1] != k:
        return None
    return m.evaluate(task, y, p)
