"""LightGBM training and evaluation: from a pipeline's data to a scored candidate.

``train`` does the work and returns a :class:`Candidate`; it knows nothing of the registry,
the store or threads. The daemon's jobs call it off the event loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from appliance.core import TASK_METRICS, ApplianceError, PipelineSettings, TrainSettings
from appliance.features import (
    FeatureSpec,
    booster_feature_names,
    build_spec,
    encode_target,
    infer_task,
    prediction_stats,
    reference_stats,
    to_matrices,
)
from appliance.models import metrics as m

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
    model_text: str = ""  # LightGBM's text format of ``booster``, as it is registered
    y_valid: np.ndarray | None = None
    p_valid: np.ndarray | None = None  # the candidate's predictions of the validation rows
    y_train_prior: Any = None  # what the trivial baseline predicts (class prior or mean)
    metric: str = ""  # the gate's primary metric
    tuning: dict[str, Any] | None = None  # the hyperparameter search, when there was one
    split: str = ""
    # Training rows left out because they are the champion's held-out rows (see build.py).
    excluded_rows: int = 0


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def training_threads(configured: int) -> int:
    """LightGBM's threads for training: the setting, else all cores but one (serving keeps
    a core while a model trains)."""
    return configured or max(1, available_cores() - 1)


def split_indices(df: pl.DataFrame, settings: PipelineSettings, fraction: float, seed: int,
                  task: str) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the training and the validation rows.

    With a timestamp, the newest ``fraction`` of rows is held out (chronological, ties in
    arrival order) and the training rows come oldest first. Otherwise the split is
    seeded and stratified by class, and random by the rows' *content*: each row is ranked
    by a seeded hash of its values (the id column when there is one), and the lowest
    ``fraction`` of each class is held out. A row so keeps its side as data is added, so
    the gate never scores the champion on rows it was trained on, and duplicated rows
    never straddle the split."""
    n = df.height
    n_valid = max(1, round(n * fraction))
    if settings.timestamp and settings.timestamp in df.columns:
        order = df.select(
            pl.int_range(pl.len(), dtype=pl.UInt32).sort_by(
                pl.col(settings.timestamp), nulls_last=False, maintain_order=True)
        ).to_series().to_numpy().astype(np.int64)
        return order[: n - n_valid], order[n - n_valid:]
    keyed = df.select(settings.id) if settings.id and settings.id in df.columns else df
    h = keyed.hash_rows(seed=seed).to_numpy()
    order = np.lexsort((np.arange(n), h))  # by hash; ties (duplicates) by arrival
    if task in ("binary", "multiclass"):
        y = df.get_column(settings.target).to_numpy()[order]
        valid_idx = []
        for cls in np.unique(y):
            idx = order[y == cls]
            take = round(len(idx) * fraction)
            if len(idx) >= 2:
                take = min(max(take, 1), len(idx) - 1)
            valid_idx.append(idx[:take])
        valid = np.sort(np.concatenate(valid_idx))
    else:
        valid = np.sort(order[:n_valid])
    mask = np.zeros(n, dtype=bool)
    mask[valid] = True
    return np.flatnonzero(~mask), valid


def split(df: pl.DataFrame, settings: PipelineSettings, fraction: float, seed: int,
          task: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Chronological holdout (the newest rows) with a timestamp, else a seeded random split,
    stratified by class for classification."""
    train_idx, valid_idx = split_indices(df, settings, fraction, seed, task)
    return df[train_idx], df[valid_idx]


def base_params(task: str, spec: FeatureSpec, ts: TrainSettings, train_rows: int
                ) -> dict[str, Any]:
    params: dict[str, Any] = {
        "objective": task,
        "learning_rate": ts.learning_rate,
        "num_leaves": ts.num_leaves,
        "min_data_in_leaf": min(ts.min_data_in_leaf, max(1, train_rows // 10)),
        "num_threads": training_threads(ts.threads),
        "seed": ts.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    if task == "multiclass":
        params["num_class"] = len(spec.classes or [])
    return params


class _Deadline:
    """Stops a tuning trial that is still running when the search's time is up."""

    order = 5

    def __init__(self, deadline: float, exc: type[BaseException]) -> None:
        self.deadline = deadline
        self.exc = exc

    def __call__(self, env: Any) -> None:
        if time.monotonic() > self.deadline:
            raise self.exc(f"the tuning budget ran out at round {env.iteration + 1}")


@dataclass
class _Fit:
    params: dict[str, Any]
    model_text: str
    best_iteration: int
    p_valid: np.ndarray
    value: float  # the primary metric on the validation rows


@dataclass
class _Rows:
    """What a fit trains on: LightGBM's binned Datasets for a local fit, the encoded rows
    for an engine that sends them elsewhere (the Dask cluster)."""

    x_valid: np.ndarray
    y_valid: np.ndarray
    train_set: lgb.Dataset | None = None
    valid_set: lgb.Dataset | None = None
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    feature_names: list[str] | None = None
    categorical: list[int] | None = None
    spec: FeatureSpec | None = None
    # (data set version, row number in its file) of each training row, for workers that
    # read the files themselves; None: the rows are sent.
    train_ids: np.ndarray | None = None
    schema: dict[str, Any] | None = None  # the features' types in the training frame


def _fit(params: dict[str, Any], rows: _Rows, task: str, metric: str, ts: TrainSettings,
         extra_callbacks: list[Any] | None = None, engine: Any = None,
         should_stop: Callable[[], bool] | None = None,
         budget_deadline: float | None = None) -> _Fit:
    if engine is not None:  # the engine's module (dask's) is imported only then
        from appliance.models.dask_engine import engine_fit

        return engine_fit(params, rows, task, metric, ts, engine, should_stop,
                          budget_deadline)
    x_valid, y_valid = rows.x_valid, rows.y_valid
    booster = lgb.train(
        params, rows.train_set, num_boost_round=ts.num_boost_round,
        valid_sets=[rows.valid_set],
        callbacks=[lgb.early_stopping(ts.early_stopping_rounds, verbose=False),
                   *(extra_callbacks or [])],
        keep_training_booster=True,  # no text round trip here; valid scores stay readable
    )
    best = booster.best_iteration or booster.current_iteration()
    p_valid = valid_predictions(booster, best, x_valid, task, params)
    # Keep only the trees early stopping chose, so the saved model predicts the same.
    text = booster.model_to_string(num_iteration=best)
    booster.free_dataset()
    value = m.evaluate(task, y_valid, p_valid)[metric]
    return _Fit(params=params, model_text=text, best_iteration=best, p_valid=p_valid,
                value=value)


def valid_predictions(booster: lgb.Booster, best: int, x_valid: np.ndarray, task: str,
                      params: dict[str, Any]) -> np.ndarray:
    """The validation predictions of the model cut at ``best`` rounds, without a second
    full prediction pass.

    LightGBM keeps the validation rows' scores up to date while it trains; they are read
    once (through ``eval_valid``), and only the rounds that early stopping threw away are
    predicted and taken off. A sample of rows is checked against a plain prediction; on
    any doubt, the plain prediction of every row is used."""
    threads = params.get("num_threads", 0)

    def plain(x: np.ndarray) -> np.ndarray:
        return booster.predict(x, num_iteration=best, num_threads=threads)

    total = booster.current_iteration()
    seen: list[np.ndarray] = []

    def capture(preds: np.ndarray, _: lgb.Dataset) -> tuple[str, float, bool]:
        seen.append(np.array(preds, dtype=np.float64, copy=True))
        return "_capture", 0.0, False

    objective = params.get("objective")
    if objective not in ("binary", "multiclass", "regression") or len(x_valid) == 0:
        return plain(x_valid)
    booster.eval_valid(feval=capture)
    if len(seen) != 1:
        return plain(x_valid)
    final = seen[0]
    if best < total:
        tail = booster.predict(x_valid, start_iteration=best, num_iteration=total - best,
                               raw_score=True, num_threads=threads)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if task == "regression":
                p = final - tail
            elif task == "binary":
                scale = float(params.get("sigmoid", 1.0))
                raw = np.log(final) - np.log1p(-final) - scale * tail
                p = 1.0 / (1.0 + np.exp(-raw))
            else:
                z = np.log(final) - tail
                z -= z.max(axis=1, keepdims=True)
                e = np.exp(z)
                p = e / e.sum(axis=1, keepdims=True)
    else:
        p = final
    sample = np.linspace(0, len(x_valid) - 1, num=min(64, len(x_valid))).astype(np.int64)
    if p.shape[0] != len(x_valid) or not np.all(np.isfinite(p)) or not np.allclose(
            p[sample], plain(x_valid[sample]), rtol=1e-7, atol=1e-9):
        return plain(x_valid)
    return p


def _search_space(trial: Any, base: dict[str, Any], train_rows: int) -> dict[str, Any]:
    """The tuned parameters and their ranges: the ones that matter most for GBDTs."""
    leaf_cap = max(2, train_rows // 10)
    params = dict(base)
    params["learning_rate"] = trial.suggest_float("learning_rate", 0.01, 0.3, log=True)
    params["num_leaves"] = trial.suggest_int("num_leaves", 4, max(4, min(256, train_rows // 2)),
                                             log=True)
    params["min_data_in_leaf"] = trial.suggest_int("min_data_in_leaf", 1,
                                                   max(1, min(200, leaf_cap)), log=True)
    params["feature_fraction"] = trial.suggest_float("feature_fraction", 0.5, 1.0)
    params["bagging_fraction"] = trial.suggest_float("bagging_fraction", 0.5, 1.0)
    params["bagging_freq"] = 1
    params["lambda_l2"] = trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True)
    return params


def _tune(default: _Fit, rows: _Rows, task: str, metric: str, ts: TrainSettings, trials: int,
          seconds: float, train_rows: int, stop: list[Any] | None = None, engine: Any = None,
          should_stop: Callable[[], bool] | None = None) -> tuple[_Fit, dict[str, Any]]:
    """A budgeted, seeded search (Optuna's TPE) on the validation rows. The configured
    parameters are the incumbent: a trial replaces them only when it scores better. With
    an engine, the trials' fits run there, one after another."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    deadline = started + seconds
    higher = metric in m.HIGHER_IS_BETTER
    best = default
    study = optuna.create_study(
        direction="maximize" if higher else "minimize",
        sampler=optuna.samplers.TPESampler(seed=ts.seed),
    )

    def objective(trial: Any) -> float:
        nonlocal best
        params = _search_space(trial, default.params, train_rows)
        if engine is not None:
            from appliance.models.dask_engine import BudgetSpent

            try:
                fit = _fit(params, rows, task, metric, ts, engine=engine,
                           should_stop=should_stop, budget_deadline=deadline)
            except BudgetSpent as exc:
                raise optuna.TrialPruned(str(exc)) from None
        else:
            fit = _fit(params, rows, task, metric, ts,
                       [_Deadline(deadline, optuna.TrialPruned), *(stop or [])])
        if np.isnan(fit.value):
            raise optuna.TrialPruned("the metric could not be computed")
        if (fit.value > best.value) if higher else (fit.value < best.value):
            best = fit
        trial.set_user_attr("rounds", fit.best_iteration)
        return fit.value

    study.optimize(objective, n_trials=trials, timeout=seconds, gc_after_trial=False,
                   catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    record: dict[str, Any] = {
        "trials_requested": trials,
        "trials_completed": len(done),
        "trials_stopped": len(pruned),
        "seconds_budget": seconds,
        "seconds": round(time.monotonic() - started, 3),
        "metric": metric,
        "sampler": f"optuna {optuna.__version__} TPE, seed {ts.seed}",
        "default_value": default.value,
        "best_value": best.value,
        "chosen": "the configured parameters" if best is default else "tuned",
        "best_params": {k: best.params[k] for k in TUNED if k in best.params}
        if best is not default else None,
        "history": [
            {"number": t.number, "state": t.state.name.lower(), "value": t.value,
             "rounds": t.user_attrs.get("rounds"), "params": t.params}
            for t in study.trials
        ],
    }
    return best, record


TUNED = ("learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction",
         "bagging_fraction", "bagging_freq", "lambda_l2")


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
          params_override: dict[str, Any] | None = None, *, tune_trials: int = 0,
          tune_seconds: float = 600.0,
          should_stop: Callable[[], bool] | None = None,
          exclude: np.ndarray | None = None, engine: Any = None,
          row_ids: np.ndarray | None = None) -> Candidate:
    """Train one candidate on ``df``: infer the task, encode, split, fit with early stopping
    (and, with ``tune_trials``, a budgeted hyperparameter search), and evaluate it.
    ``should_stop`` is polled at every boosting round; when it answers True the training
    raises :class:`TrainingCancelled`. Rows where ``exclude`` is True are not trained on
    (the champion's held-out rows, so that the gate scores both out of sample), unless
    too few rows would be left. ``engine`` (the Dask engine; None: this box) runs the fits
    elsewhere; everything before and after them is the same. ``row_ids`` (each row's data
    set version and row number) lets its workers read the training rows themselves."""
    started = time.monotonic()
    target = settings.target
    if target not in df.columns:
        raise ApplianceError(
            "missing_target",
            f"the data has no target column `{target}`",
            {"column": target},
        )
    if settings.timestamp and settings.timestamp not in df.columns:
        raise ApplianceError(
            "missing_timestamp",
            f"the timestamp column `{settings.timestamp}` is not in the data; fix "
            "`timestamp` in the pipeline's config", {"column": settings.timestamp},
        )
    if df.get_column(target).null_count():
        labelled = df.get_column(target).is_not_null()
        df = df.filter(labelled)
        if exclude is not None:
            exclude = exclude[labelled.to_numpy()]
        if row_ids is not None:
            row_ids = row_ids[labelled.to_numpy()]
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
    metric = gate_metric(settings, task)
    spec = build_spec(df, settings, task)
    train_idx, valid_idx = split_indices(df, settings, ts.validation_fraction, ts.seed, task)
    excluded = 0
    if exclude is not None:
        kept = train_idx[~exclude[train_idx]]
        if len(kept) >= MIN_ROWS:
            excluded = len(train_idx) - len(kept)
            train_idx = kept
    x_train, x_valid = to_matrices(df, spec, [train_idx, valid_idx])
    y_all = encode_target(df.get_column(target), spec)
    y_train, y_valid = y_all[train_idx], y_all[valid_idx]
    valid_df = df[valid_idx]
    # Drift reference of the features: the training split's distributions.
    reference = reference_stats(df[train_idx], spec)
    schema = ({f.name: df.schema[f.name] for f in spec.features}
              if row_ids is not None else None)  # for workers that read the files
    del y_all, df
    n_train = len(y_train)

    params = base_params(task, spec, ts, n_train)
    params.update(params_override or {})
    stop = [_cancel_callback(should_stop)] if should_stop else []
    rows = _Rows(x_valid, y_valid, feature_names=booster_feature_names(spec.columns),
                 categorical=list(spec.categorical_indices or []), spec=spec)
    if engine is not None:
        rows.x_train, rows.y_train = x_train, y_train
        if row_ids is not None:
            rows.train_ids = row_ids[train_idx]
            rows.schema = schema
    else:
        # The binned data set is built once; tuning trials reuse it (min_data_in_leaf may
        # vary between trials only without LightGBM's pre-filter of features).
        rows.train_set = lgb.Dataset(
            x_train, y_train, feature_name=rows.feature_names,
            categorical_feature=spec.categorical_indices or "auto", free_raw_data=True,
            params={"feature_pre_filter": False} if tune_trials else None,
        )
        rows.valid_set = lgb.Dataset(
            x_valid, y_valid, reference=rows.train_set,
            params={"feature_pre_filter": False} if tune_trials else None)
    del x_train
    fit = _fit(params, rows, task, metric, ts, stop, engine=engine, should_stop=should_stop)
    tuning = None
    if tune_trials:
        fit, tuning = _tune(fit, rows, task, metric, ts, tune_trials, tune_seconds, n_train,
                            stop, engine=engine, should_stop=should_stop)
    del rows

    booster = lgb.Booster(model_str=fit.model_text)
    metrics = m.evaluate(task, y_valid, fit.p_valid)
    base = m.evaluate(task, y_valid, m.baseline_predictions(
        task, y_train, len(y_valid), len(spec.classes or [])))
    gains = booster.feature_importance(importance_type="gain")
    importance = {name: float(g) for name, g in zip(spec.columns, gains, strict=True)}
    return Candidate(
        spec=spec, booster=booster, params=fit.params, metrics=metrics, baseline=base,
        best_iteration=fit.best_iteration, importance=importance, task_reason=reason,
        train_rows=n_train, valid_rows=len(y_valid), valid_frame=valid_df,
        seconds=round(time.monotonic() - started, 3), model_text=fit.model_text,
        y_valid=y_valid, p_valid=fit.p_valid, y_train_prior=_prior(task, y_train, spec),
        metric=metric, tuning=tuning,
        split="chronological" if settings.timestamp else (
            "stratified random" if task != "regression" else "random"),
        reference={**reference, "prediction": prediction_stats(spec, fit.p_valid)},
        excluded_rows=excluded,
    )


def _prior(task: str, y_train: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """What the trivial baseline predicts for every row: the class prior or the mean."""
    return m.baseline_predictions(task, y_train, 1, len(spec.classes or []))[0]


def gate_metric(settings: PipelineSettings, task: str) -> str:
    """The pipeline's primary metric, checked against the task (which may be inferred)."""
    chosen = settings.train.metric
    if chosen and chosen not in TASK_METRICS[task]:
        raise ApplianceError(
            "bad_metric",
            f"the gate metric `{chosen}` does not apply to a {task} pipeline; set "
            f"`train.metric` of the pipeline to one of {', '.join(TASK_METRICS[task])}",
            {"metric": chosen, "task": task},
        )
    return m.primary_metric(task, chosen)
