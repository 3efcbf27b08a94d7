"""Evaluation metrics, in NumPy (no scikit-learn on an edge box for a dozen formulas)."""

from __future__ import annotations

import numpy as np

EPS = 1e-15

# The metric that decides the gate, per task, and whether higher is better.
PRIMARY = {"binary": ("auc", True), "multiclass": ("log_loss", False),
           "regression": ("rmse", False)}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # Ties share the mean of the ranks they span.
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(x)]))
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    pc = np.clip(p, EPS, 1 - EPS)
    pred = (p >= 0.5).astype(np.float64)
    tp = float(((pred == 1) & (y == 1)).sum())
    fp = float(((pred == 1) & (y == 0)).sum())
    fn = float(((pred == 0) & (y == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "auc": auc(y, p),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "accuracy": float(np.mean(pred == y)),
        "f1": f1,
        "brier": float(np.mean((p - y) ** 2)),
    }


def multiclass_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    yi = y.astype(np.int64)
    k = p.shape[1]
    pc = np.clip(p, EPS, 1.0)
    pred = p.argmax(axis=1)
    f1s = []
    for c in range(k):
        tp = float(((pred == c) & (yi == c)).sum())
        fp = float(((pred == c) & (yi != c)).sum())
        fn = float(((pred != c) & (yi == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "log_loss": float(-np.mean(np.log(pc[np.arange(len(yi)), yi]))),
        "accuracy": float(np.mean(pred == yi)),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
    }


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else 0.0,
    }


def evaluate(task: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if task == "binary":
        return binary_metrics(y, p)
    if task == "multiclass":
        return multiclass_metrics(y, p)
    return regression_metrics(y, p)


def baseline_predictions(task: str, y_train: np.ndarray, n: int, k: int = 0) -> np.ndarray:
    """The trivial model: the class prior, or the mean."""
    if task == "binary":
        return np.full(n, float(np.mean(y_train)))
    if task == "multiclass":
        prior = np.bincount(y_train.astype(np.int64), minlength=k) / len(y_train)
        return np.tile(prior, (n, 1))
    return np.full(n, float(np.mean(y_train)))


def is_better(task: str, challenger: dict[str, float], champion: dict[str, float],
              min_improvement: float, metric: str | None = None) -> tuple[bool, str]:
    """Whether the challenger's primary metric beats the champion's by ``min_improvement``."""
    name, higher = PRIMARY[task]
    if metric:
        name = metric
        higher = metric in ("auc", "accuracy", "f1", "macro_f1", "r2")
    a, b = challenger.get(name), champion.get(name)
    if a is None or b is None or np.isnan(a):
        return False, f"{name} could not be computed"
    delta = (a - b) if higher else (b - a)
    verdict = bool(delta > min_improvement)
    word = "better" if verdict else "not better"
    return verdict, f"{name} {a:.4f} vs {b:.4f}: {word} (needs > {min_improvement:g})"
