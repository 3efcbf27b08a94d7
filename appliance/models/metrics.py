"""Evaluation metrics, in NumPy (no scikit-learn on an edge box for a dozen formulas)."""

from __future__ import annotations

from dataclasses import dataclass

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


def _rank_key(p: np.ndarray) -> np.ndarray:
    """Scores as ranked by the AUC: rounded to float32, so that two computations of the same
    prediction that differ only in their last bits (the order trees were summed in) tie,
    as they should, instead of reordering rows."""
    return np.asarray(p, dtype=np.float64).astype(np.float32)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(_rank_key(p))
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


# --- the gate: a paired comparison on the same validation rows ---------------------------

HIGHER_IS_BETTER = {"auc", "accuracy", "f1", "macro_f1", "r2"}


def primary_metric(task: str, configured: str | None = None) -> str:
    """The metric that decides the gate: the pipeline's choice, else the task's default."""
    return configured or PRIMARY[task][0]


@dataclass
class Comparison:
    """``challenger`` against ``reference`` on ``metric``. ``gain`` is oriented so that
    positive means the challenger is better; ``se`` is the standard error of that gain
    (paired, on the same rows), or None when there are too few rows for one."""

    metric: str
    challenger: float
    reference: float
    gain: float
    se: float | None


def _delong(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of the AUC: for each positive, the share of negatives
    ranked below it; for each negative, the share of positives ranked above it. The AUC is
    the mean of either."""
    p = _rank_key(p)
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    tz = _average_ranks(np.concatenate([pos, neg]))
    v10 = (tz[:m] - _average_ranks(pos)) / n
    v01 = 1.0 - (tz[m:] - _average_ranks(neg)) / m
    return v10, v01


def _per_row_loss(task: str, metric: str, y: np.ndarray, p: np.ndarray) -> np.ndarray | None:
    """Each row's contribution to a metric that is a mean over rows (lower is better)."""
    if task == "multiclass":
        yi = y.astype(np.int64)
        if metric == "log_loss":
            return -np.log(np.clip(p[np.arange(len(yi)), yi], EPS, 1.0))
        if metric == "accuracy":
            return (p.argmax(axis=1) != yi).astype(np.float64)
        return None
    if metric == "log_loss":
        pc = np.clip(p, EPS, 1 - EPS)
        return -(y * np.log(pc) + (1 - y) * np.log(1 - pc))
    if metric == "brier":
        return (p - y) ** 2
    if metric == "accuracy":
        return ((p >= 0.5).astype(np.float64) != y).astype(np.float64)
    if metric in ("rmse", "r2"):
        return (p - y) ** 2
    if metric == "mae":
        return np.abs(p - y)
    return None


def _se_of_mean(d: np.ndarray) -> float:
    return float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")


BOOTSTRAP_RESAMPLES = 200


def _bootstrap_se(task: str, metric: str, y: np.ndarray, p_a: np.ndarray,
                  p_b: np.ndarray) -> float:
    """The standard error of the gain of a metric that has no per-row form (F1, macro F1):
    a paired bootstrap of the rows, seeded, so the same rows give the same answer."""
    rng = np.random.default_rng(0)
    n = len(y)
    higher = metric in HIGHER_IS_BETTER
    gains = np.empty(BOOTSTRAP_RESAMPLES)
    for i in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, n, n)
        a = evaluate(task, y[idx], p_a[idx]).get(metric, float("nan"))
        b = evaluate(task, y[idx], p_b[idx]).get(metric, float("nan"))
        gains[i] = (a - b) if higher else (b - a)
    gains = gains[np.isfinite(gains)]
    return float(np.std(gains, ddof=1)) if len(gains) > 1 else float("inf")


def compare(task: str, metric: str, y: np.ndarray, p_challenger: np.ndarray,
            p_reference: np.ndarray) -> Comparison:
    """Score two sets of predictions of the same rows on ``metric`` and estimate how sure
    the difference is: DeLong's paired variance for the AUC, the paired per-row
    difference for the metrics that are means over rows (RMSE and R² through their mean
    squared error), a paired bootstrap for the others (F1, macro F1)."""
    a = evaluate(task, y, p_challenger).get(metric, float("nan"))
    b = evaluate(task, y, p_reference).get(metric, float("nan"))
    gain = (a - b) if metric in HIGHER_IS_BETTER else (b - a)
    se: float | None = None
    if metric == "auc":
        if 0 < int((y == 1).sum()) < len(y):
            a10, a01 = _delong(y, p_challenger)
            b10, b01 = _delong(y, p_reference)
            var = (np.var(a10 - b10, ddof=1) / len(a10) if len(a10) > 1 else np.inf) + (
                np.var(a01 - b01, ddof=1) / len(a01) if len(a01) > 1 else np.inf)
            se = float(np.sqrt(var))
    else:
        la = _per_row_loss(task, metric, y, p_challenger)
        lb = _per_row_loss(task, metric, y, p_reference)
        if la is not None and lb is not None:
            se = _se_of_mean(lb - la)
            if metric == "rmse":
                # RMSE_b - RMSE_a = (MSE_b - MSE_a) / (RMSE_a + RMSE_b)
                se = se / (a + b) if a + b > 0 else float("inf")
            elif metric == "r2":
                var_y = float(np.var(y))
                se = se / var_y if var_y > 0 else float("inf")
        elif len(y) > 1:
            se = _bootstrap_se(task, metric, y, p_challenger, p_reference)
    return Comparison(metric=metric, challenger=float(a), reference=float(b), gain=float(gain),
                      se=se)


def standard_errors(c: Comparison, margin: float = 0.0) -> float | None:
    """How many standard errors the gain is beyond ``margin`` (the one-sided test's
    statistic); None when there is no finite standard error."""
    if c.se is None or not np.isfinite(c.se) or np.isnan(c.gain):
        return None
    excess = c.gain - margin
    if c.se == 0:
        return 0.0 if excess == 0 else float(np.copysign(np.inf, excess))
    return float(excess / c.se)


def _shown(c: Comparison, k: float | None = None, short: bool = False) -> str:
    """``auc 0.9054 vs 0.8781 (+0.0273 ± 0.0064, 4.3 SE)``; short: ``0.5000 (+0.4054 ...)``,
    for a reference whose challenger value was just shown."""
    sign = "+" if c.gain >= 0 else "-"
    head = f"{c.reference:.4f}" if short else (
        f"{c.metric} {c.challenger:.4f} vs {c.reference:.4f}")
    shown = f"{head} ({sign}{abs(c.gain):.4f}"
    if c.se is not None and np.isfinite(c.se):
        shown += f" ± {c.se:.4f}"
    if k is not None:
        shown += f", {k:.1f} SE"
    return shown + ")"


def passes(c: Comparison, min_improvement: float, z: float,
           short: bool = False) -> tuple[bool, str]:
    """A one-sided test that the challenger is better by more than ``min_improvement``:
    the gain is over it and, when ``z`` > 0, over it by ``z`` standard errors (SE) of the
    paired difference (so a challenger no better than the reference passes with the
    normal tail's probability beyond ``z``: 2.3% at 2). Returns the verdict and its
    reason, with the numbers (``short``: without the metric and challenger's value)."""
    if np.isnan(c.challenger) or np.isnan(c.reference):
        return False, f"{c.metric} could not be computed on these rows"
    ok = bool(c.gain > min_improvement)
    margin = "" if short and not min_improvement else f"a gain > {min_improvement:g} "
    if z <= 0:
        word = "better" if ok else "not better"
        return ok, f"{_shown(c, short=short)}: {word} (needs {margin or 'a gain > 0'})".replace(
            " )", ")")
    k = standard_errors(c, min_improvement)
    if k is None:
        return False, (f"{_shown(c, short=short)}: not shown to be better (no standard error "
                       f"on so few rows; needs {margin}by {z:g} SE)")
    ok = ok and k > z
    word = "better" if ok else "not better"
    # Shown: the gain in standard errors; tested: what it is beyond the margin.
    shown = _shown(c, standard_errors(c), short)
    return ok, f"{shown}: {word} (needs {margin}by {z:g} SE)".replace("needs by", "needs")


def rows_to_show(c: Comparison, min_improvement: float, z: float, rows: int) -> int | None:
    """How many rows like these a gain of this size beyond ``min_improvement`` would need
    to pass at ``z`` standard errors, if it held (the standard error shrinks as one over
    the square root of the rows); None when it passes, or no such gain can be read."""
    if z <= 0 or c.se is None or not np.isfinite(c.se) or c.se <= 0 or rows <= 0:
        return None
    edge = c.gain - min_improvement
    if not np.isfinite(edge) or edge <= 0 or edge > z * c.se:
        return None
    return int(np.ceil(rows * (z * c.se / edge) ** 2 - 1e-9))


def significant_loss(c: Comparison, z: float) -> tuple[bool, str]:
    """A one-sided test that the challenger is worse than the reference: its loss is over
    ``z`` standard errors (``z`` = 0: any loss). Returns whether it is, and the numbers."""
    if np.isnan(c.challenger) or np.isnan(c.reference):
        return False, f"{c.metric} could not be computed on these rows; not checked"
    k = standard_errors(c)
    if z <= 0:
        worse = bool(c.gain < 0)
        return worse, f"{_shown(c)}: {'worse' if worse else 'no loss'} (any loss blocks)"
    if k is None:
        return False, f"{_shown(c)}: no standard error on so few rows; not checked"
    worse = k < -z
    return worse, (f"{_shown(c, k)}: {'worse' if worse else 'no significant loss'} "
                   f"(blocks beyond -{z:g} SE)")


def standard_error(task: str, metric: str, y: np.ndarray, p: np.ndarray) -> float | None:
    """The standard error of one model's ``metric`` on these rows (not of a difference):
    DeLong's for the AUC, the spread of the per-row terms for the metrics that are means
    over rows (RMSE and R² through their mean squared error). None where the metric has no
    per-row form (F1) or can't be computed (an AUC of one class)."""
    if metric == "auc":
        m_pos = int((y == 1).sum())
        if not 0 < m_pos < len(y):
            return None
        v10, v01 = _delong(y, p)
        var = (np.var(v10, ddof=1) / len(v10) if len(v10) > 1 else np.inf) + (
            np.var(v01, ddof=1) / len(v01) if len(v01) > 1 else np.inf)
        return float(np.sqrt(var))
    loss = _per_row_loss(task, metric, y, p)
    if loss is None:
        return None
    se = _se_of_mean(loss)
    if metric == "rmse":
        rmse = float(np.sqrt(np.mean(loss)))
        se = se / (2 * rmse) if rmse > 0 else float("inf")
    elif metric == "r2":
        var_y = float(np.var(y))
        se = se / var_y if var_y > 0 else float("inf")
    return se
