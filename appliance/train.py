"""LightGBM training and evaluation: from a pipeline's data to a scored candidate.

``train`` does the work and returns a :class:`Candidate`; it knows nothing of the registry,
the store or threads. The daemon's jobs call it off the event loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from appliance import metrics as m
from appliance.config import PipelineSettings, TrainSettings
from appliance.drift import reference_stats
from appliance.errors import ApplianceError
from appliance.features import FeatureSpec, build_spec, encode_target, infer_task, to_matrix
from appliance.predictor import LoadedModel

MIN_ROWS = 20


@dataclass
class Candidate:
    spec: FeatureSpec
    booster: lgb.Booster
    params: dict[str, Any]
    metrics: dict[str, float]
    baseline: dict[str, float]
    best_iteration: int
    importance: dict[str, float]
    task_reason: str
    train_rows: int
    valid_rows: int
    valid_frame: pl.DataFrame
    seconds: float
    # Drift reference: the training split's distributions and the validation predictions'
    # (out-of-sample, like served ones); saved in model.json as "reference".
    reference: dict[str, Any] | None = None


def read_datasets(paths: list[Path]) -> pl.DataFrame:
    """All data set versions as one frame, oldest first. Columns added later are null in
    older versions."""
    if not paths:
        raise ApplianceError("no_data", "the pipeline has no data set yet")
    frames = [pl.read_parquet(p) for p in paths]
    return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]


def training_threads(configured: int) -> int:
    return configured or max(1, (os.cpu_count() or 2) - 1)


def split(df: pl.DataFrame, settings: PipelineSettings, fraction: float, seed: int,
          task: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Chronological holdout (the newest rows) with a timestamp, else a seeded random split,
    stratified by class for classification."""
    n = df.height
    n_valid = max(1, round(n * fraction))
    if settings.timestamp and settings.timestamp in df.columns:
        ordered = df.sort(settings.timestamp, nulls_last=False, maintain_order=True)
        return ordered.head(n - n_valid), ordered.tail(n_valid)
    rng = np.random.default_rng(seed)
    if task in ("binary", "multiclass"):
        y = df.get_column(settings.target).to_numpy()
        valid_idx = []
        for cls in np.unique(y):
            idx = np.flatnonzero(y == cls)
            rng.shuffle(idx)
            take = round(len(idx) * fraction)
            if len(idx) >= 2:
                take = min(max(take, 1), len(idx) - 1)
            valid_idx.append(idx[:take])
        valid = np.sort(np.concatenate(valid_idx))
    else:
        valid = np.sort(rng.permutation(n)[:n_valid])
    mask = np.zeros(n, dtype=bool)
    mask[valid] = True
    return df.filter(~pl.Series(mask)), df.filter(pl.Series(mask))


class TrainingCancelled(ApplianceError):
    """Training was stopped from outside (the daemon is shutting down)."""

    def __init__(self) -> None:
        super().__init__("cancelled", "training was stopped because the daemon is shutting "
                         "down; nothing was registered")


def _cancel_callback(should_stop: Callable[[], bool]) -> Callable[[Any], None]:
    def check(_env: Any) -> None:
        if should_stop():
            raise TrainingCancelled()
    check.order = 1  # type: ignore[attr-defined]  # before early stopping
    return check


def train(df: pl.DataFrame, settings: PipelineSettings, ts: TrainSettings,
          params_override: dict[str, Any] | None = None,
          should_stop: Callable[[], bool] | None = None) -> Candidate:
    """``should_stop`` is polled at every boosting round; when it answers True the training
    raises :class:`TrainingCancelled`."""
    started = time.monotonic()
    target = settings.target
    if target not in df.columns:
        raise ApplianceError(
            "missing_target",
            f"the data has no target column `{target}`",
            {"column": target},
        )
    df = df.filter(pl.col(target).is_not_null())
    if df.height < MIN_ROWS:
        raise ApplianceError(
            "too_few_rows",
            f"{df.height} labelled rows; at least {MIN_ROWS} are needed to train",
            {"rows": df.height},
        )
    if settings.task:
        task, reason = settings.task, "set in the config"
    else:
        task, reason = infer_task(df.get_column(target))
    spec = build_spec(df, settings, task)
    train_df, valid_df = split(df, settings, ts.validation_fraction, ts.seed, task)
    x_train, x_valid = to_matrix(train_df, spec), to_matrix(valid_df, spec)
    y_train = encode_target(train_df.get_column(target), spec)
    y_valid = encode_target(valid_df.get_column(target), spec)

    params: dict[str, Any] = {
        "objective": task,
        "learning_rate": ts.learning_rate,
        "num_leaves": ts.num_leaves,
        "min_data_in_leaf": min(ts.min_data_in_leaf, max(1, len(y_train) // 10)),
        "num_threads": training_threads(ts.threads),
        "seed": ts.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    if task == "multiclass":
        params["num_class"] = len(spec.classes or [])
    params.update(params_override or {})
    train_set = lgb.Dataset(
        x_train, y_train, feature_name=spec.columns,
        categorical_feature=spec.categorical_indices or "auto", free_raw_data=True,
    )
    valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set)
    booster = lgb.train(
        params, train_set, num_boost_round=ts.num_boost_round, valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(ts.early_stopping_rounds, verbose=False),
                   *([_cancel_callback(should_stop)] if should_stop else [])],
    )
    if booster.best_iteration > 0:
        # Keep only the trees early stopping chose, so the saved model predicts the same.
        booster = lgb.Booster(
            model_str=booster.model_to_string(num_iteration=booster.best_iteration)
        )
    p_valid = booster.predict(x_valid, num_threads=params["num_threads"])
    metrics = m.evaluate(task, y_valid, p_valid)
    base = m.evaluate(task, y_valid, m.baseline_predictions(
        task, y_train, len(y_valid), len(spec.classes or [])))
    gains = booster.feature_importance(importance_type="gain")
    importance = {name: float(g) for name, g in zip(spec.columns, gains, strict=True)}
    return Candidate(
        spec=spec, booster=booster, params=params, metrics=metrics, baseline=base,
        best_iteration=booster.current_iteration(), importance=importance, task_reason=reason,
        train_rows=len(y_train), valid_rows=len(y_valid), valid_frame=valid_df,
        seconds=round(time.monotonic() - started, 3),
        reference=reference_stats(train_df, spec, p_valid),
    )


def score(model: LoadedModel, frame: pl.DataFrame, spec: FeatureSpec) -> dict[str, float] | None:
    """The metrics of an existing model on a candidate's validation frame, or None when it
    can't score it (its features are missing, or the classes changed)."""
    if model.spec.task != spec.task or model.spec.classes != spec.classes:
        return None
    try:
        x = to_matrix(frame, model.spec)
    except ApplianceError:
        return None
    y = encode_target(frame.get_column(spec.target), spec)
    return m.evaluate(spec.task, y, model.predict_matrix(x))


@dataclass
class Decision:
    promote: bool
    reason: str
    champion_metrics: dict[str, float] | None


def decide(candidate: Candidate, champion: LoadedModel | None, min_improvement: float,
           metric: str | None = None) -> Decision:
    """The gate: a challenger replaces the champion only when it is better on the same,
    newest validation data; the first model must beat the trivial baseline."""
    task = candidate.spec.task
    if champion is not None:
        champ = score(champion, candidate.valid_frame, candidate.spec)
        if champ is not None:
            ok, why = m.is_better(task, candidate.metrics, champ, min_improvement, metric)
            return Decision(ok, f"vs production v{champion.version}: {why}", champ)
        why_base = f"production v{champion.version} can't score the new data; "
    else:
        why_base = ""
    ok, why = m.is_better(task, candidate.metrics, candidate.baseline, 0.0, metric)
    return Decision(ok, f"{why_base}vs baseline: {why}", None)
