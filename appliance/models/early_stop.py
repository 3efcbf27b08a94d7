"""Early stopping on the validation rows, as ``lgb.early_stopping`` does it, for fits that
run elsewhere (the Dask engine).

A distributed fit spreads an ``eval_set`` over the workers, and each worker would judge
its own share of the rows: the workers could stop at different rounds, and no worker sees
the metric of the whole validation set. Here every worker gets the validation rows whole
(:class:`StopOnRows`, a LightGBM callback) and computes the same metric that
``lgb.early_stopping`` uses locally (the objective's default: binary_logloss,
multi_logloss, l2) round by round; data-parallel workers grow the same trees, so they
all stop at the same round. The box then recomputes the curve from the returned model
(:func:`metric_curve`) and chooses the best iteration with the same rule
(:func:`best_iteration`), so the model is cut exactly where local early stopping would
cut it on those rows.

This module imports only numpy and LightGBM: it is sent to the workers by value (they
need not have the appliance installed).
"""

from __future__ import annotations

import time
from typing import Any

import lightgbm as lgb
import numpy as np

EPS = 1e-15  # LightGBM's kEpsilon in its log-loss metrics


def round_metric(task: str, raw: np.ndarray, y: np.ndarray, sigmoid: float = 1.0) -> float:
    """The objective's default metric of raw scores ``raw`` (lower is better)."""
    if task == "regression":
        return float(np.mean((raw - y) ** 2))
    if task == "binary":
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-sigmoid * raw))
        p = np.where(y > 0, p, 1.0 - p)
        return float(np.mean(-np.log(np.maximum(p, EPS))))
    z = raw - raw.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e[np.arange(len(y)), y.astype(np.int64)] / e.sum(axis=1)
    return float(np.mean(-np.log(np.maximum(p, EPS))))


class Rule:
    """``lgb.early_stopping``'s rule: the best round so far (strictly better), stop once it
    has not improved for ``rounds`` rounds."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.best = -1
        self.best_score = float("inf")

    def step(self, iteration: int, score: float) -> bool:
        """Record round ``iteration`` (0-based); True when training should stop here."""
        if score < self.best_score:
            self.best, self.best_score = iteration, score
            return False
        return iteration - self.best >= self.rounds


def best_iteration(curve: list[float], rounds: int) -> int:
    """The number of rounds ``lgb.early_stopping`` keeps for this validation curve."""
    rule = Rule(rounds)
    for i, score in enumerate(curve):
        if rule.step(i, score):
            break
    return rule.best + 1


def metric_curve(booster: lgb.Booster, x: np.ndarray, y: np.ndarray, task: str,
                 sigmoid: float = 1.0, threads: int = 0) -> list[float]:
    """The validation metric after each round of ``booster``, one tree at a time (the cost
    of one full prediction)."""
    raw: np.ndarray | None = None
    out = []
    for i in range(booster.current_iteration()):
        step = booster.predict(x, start_iteration=i, num_iteration=1, raw_score=True,
                               num_threads=threads)
        raw = step if raw is None else raw + step
        out.append(round_metric(task, raw, y, sigmoid))
    return out


class Stopped(Exception):
    """The box asked the fit to stop (cancelled, out of time)."""


class StopOnRows:
    """LightGBM callback run on every worker: early stopping on the whole validation set,
    and a stop when the box sets the Dask ``Event`` named ``stop_event``."""

    order = 30

    def __init__(self, x: np.ndarray, y: np.ndarray, task: str, rounds: int,
                 sigmoid: float = 1.0, stop_event: str = "", poll_s: float = 0.5) -> None:
        self.x, self.y, self.task = x, y, task
        self.rule = Rule(rounds)
        self.sigmoid = sigmoid
        self.stop_event = stop_event
        self.poll_s = poll_s
        self.raw: np.ndarray | None = None
        self.polled = 0.0
        self.event: Any = None

    def _should_stop(self) -> bool:
        if not self.stop_event:
            return False
        now = time.monotonic()
        if now - self.polled < self.poll_s:
            return False
        self.polled = now
        try:
            if self.event is None:
                from distributed import Event  # on the worker only

                self.event = Event(self.stop_event)
            return bool(self.event.is_set())
        except Exception:  # no scheduler to ask: the box's own checks decide
            return False

    def __call__(self, env: Any) -> None:
        if self._should_stop():
            raise Stopped(f"stopped by the box at round {env.iteration + 1}")
        step = env.model.predict(self.x, start_iteration=env.iteration, num_iteration=1,
                                 raw_score=True)
        self.raw = step if self.raw is None else self.raw + step
        score = round_metric(self.task, self.raw, self.y, self.sigmoid)
        if self.rule.step(env.iteration, score):
            # Stop, keeping every round trained (LightGBM would otherwise save the model
            # cut at the best round): the box cuts it, after checking the curve itself.
            raise lgb.callback.EarlyStopException(
                env.iteration, [("valid_whole", "default", score, False)])


def lightgbm_version() -> str | None:
    """Run on each worker by ``appliance doctor``."""
    try:
        import lightgbm
    except ImportError:
        return None
    return str(lightgbm.__version__)


def shared_storage_probe(state_root: str) -> tuple[bool, str | None]:
    """Run on each worker by ``appliance doctor`` with [dask] shared_storage: whether the
    state directory is there, and the appliance version installed (None: not installed)."""
    import os

    try:
        import appliance
    except ImportError:
        return os.path.isdir(state_root), None
    return os.path.isdir(state_root), str(appliance.__version__)
