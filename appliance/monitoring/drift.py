"""Data drift: how far new data is from the profile of a model's training data.

Pure functions over NumPy and Polars; no I/O, no store. The profile
(:func:`appliance.features.profile.reference_stats`) summarises the training split when a
model is trained (it is saved in ``model.json`` under ``"reference"``); ``evaluate``
compares a current sample with it and returns a :class:`~appliance.api_types.DriftReport`.

Per numeric (and boolean) feature: the Population Stability Index over the reference's
decile bins, and the two-sample Kolmogorov-Smirnov statistic evaluated on the reference's
percentile grid (the largest gap between the two distribution functions at the 101
reference percentiles, exact at those points). Per categorical feature: PSI over the
categories and the Jensen-Shannon distance (natural log, as SciPy computes it). Missing
values are a bin of their own, so a sensor that starts sending nulls is drift too.

Thresholds are those the established tools use: PSI above 0.2 is a significant shift
(the credit-scoring rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant);
a KS statistic above 0.2 (Deepchecks' default drift-score bound for numeric features); a
Jensen-Shannon distance above 0.1 (Evidently's default). A feature drifts when any of its
scores passes its threshold; the data set drifts when at least half of its features drift.

Small samples: PSI and JS grow with pure sampling noise, about (bins - 1) * (1/n + 1/N)
for PSI with n current and N reference values. So that noise alone stays far below the
thresholds, the number of bins is capped by the two sample sizes (``NOISE_BUDGET``):
adjacent deciles are merged, and rare categories join ``__other__``. With a few thousand
rows on each side every decile and the common categories are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from appliance.api_types import DriftFeature, DriftReport
from appliance.features.profile import OTHER, as_float, category_counts, sorted_valid

EPS = 1e-4  # floor of a bin's share in PSI, so an empty bin costs a finite amount
NOISE_BUDGET = 0.01  # the largest expected PSI from sampling noise alone
MIN_EXPECTED = 5  # a category gets its own bin when expected this often in both samples


# --- the scores -------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population Stability Index of two distributions over the same bins (shares that
    each sum to 1): sum((a - e) * ln(a / e)), with empty bins floored at ``EPS``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def js(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon distance (natural log): the square root of the JS divergence."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else p
    q = q / q.sum() if q.sum() > 0 else q
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return float(math.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def ks(ref_cdf: Sequence[float] | np.ndarray, cur_cdf: Sequence[float] | np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: the largest gap between two distribution functions
    evaluated at the same points."""
    a = np.asarray(ref_cdf, dtype=np.float64)
    b = np.asarray(cur_cdf, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if len(a) else 0.0


def max_bins(n_current: int, n_reference: int) -> int:
    """How many value bins two samples of these sizes support within ``NOISE_BUDGET``."""
    if n_current <= 0 or n_reference <= 0:
        return 1
    return max(2, int(1 + NOISE_BUDGET / (1 / n_current + 1 / n_reference)))


# --- comparing --------------------------------------------------------------------------


def _with_nulls(value_shares: np.ndarray, null_share: float) -> np.ndarray:
    return np.concatenate((value_shares * (1.0 - null_share), [null_share]))


def compare_numeric(
    ref: dict[str, Any], values: pl.Series | np.ndarray | Sequence[Any]
) -> tuple[float, float | None, int]:
    """(PSI, KS, rows) of current ``values`` against a numeric reference."""
    s, total = sorted_valid(as_float(values))
    n = len(s)
    if total == 0:
        return 0.0, None, 0
    ref_null = float(ref.get("null_fraction", 0.0))
    cur_null = (total - n) / total
    edges = np.asarray(ref.get("bin_edges", []), dtype=np.float64)
    ref_shares = np.asarray(ref.get("bin_fractions", [1.0]), dtype=np.float64)
    n_ref = round(ref.get("count", 0) * (1.0 - ref_null))
    if n == 0 or n_ref == 0 or len(edges) == 0:
        # Nothing to bin on one side: compare only how much is missing.
        shares_r = np.array([1.0 - ref_null, ref_null])
        shares_c = np.array([1.0 - cur_null, cur_null])
        return psi(shares_r, shares_c), None, total
    keep = len(edges) + 1
    limit = max_bins(n, n_ref)
    ref_cum = np.cumsum(ref_shares)[:-1]  # the reference share at or below each edge
    if keep > limit:
        # Keep the edges nearest to equal reference mass between them.
        m = len(edges)
        idx = np.unique([round((j + 1) * (m + 1) / limit) - 1 for j in range(limit - 1)])
        edges, ref_cum = edges[idx], ref_cum[idx]
    cur_le = np.searchsorted(s, edges, side="right")
    cur_shares = np.diff(np.concatenate(([0], cur_le, [n]))) / n
    ref_merged = np.diff(np.concatenate(([0.0], ref_cum, [1.0])))
    score = psi(_with_nulls(ref_merged, ref_null), _with_nulls(cur_shares, cur_null))
    grid = np.asarray(ref.get("quantiles", []), dtype=np.float64)
    ks_score = None
    if len(grid):
        cur_cdf = np.searchsorted(s, grid, side="right") / n
        below = np.searchsorted(s, grid[0], side="left") / n  # F just below the reference min
        ks_score = max(ks(ref["cdf"], cur_cdf), float(below))
    return score, ks_score, total


def compare_categorical(ref: dict[str, Any],
                        values: pl.Series | Sequence[Any]) -> tuple[float, float, int]:
    """(PSI, JS distance, rows) of current ``values`` against a categorical reference."""
    s = values if isinstance(values, pl.Series) else pl.Series(list(values), strict=False)
    s = s.cast(pl.String, strict=False)
    total = len(s)
    if total == 0:
        return 0.0, 0.0, 0
    nulls = s.null_count()
    n = total - nulls
    ref_null = float(ref.get("null_fraction", 0.0))
    cur_null = nulls / total
    fractions: dict[str, float] = ref.get("fractions", {})
    n_ref = round(ref.get("count", 0) * (1.0 - ref_null))
    counts: dict[str, int] = {}
    if n:
        counts = dict(zip(*category_counts(s), strict=True))
    # The most frequent categories, as many as the sample sizes support, each expected at
    # least MIN_EXPECTED times in both samples; the rest are one bin. Ranked by the pooled
    # count of both samples, which does not favour either side when nothing changed.
    smallest = MIN_EXPECTED / max(1, min(n, n_ref))
    named = sorted(((f * n_ref + counts.get(c, 0), c) for c, f in fractions.items()
                    if c != OTHER and f >= smallest), reverse=True)
    limit = max_bins(n, n_ref)
    kept = [c for _, c in named[: max(1, limit - 1)]]
    ref_kept = np.array([fractions[c] for c in kept])
    cur_kept = np.array([counts.get(c, 0) for c in kept], dtype=np.float64)
    ref_shares = np.append(ref_kept, max(0.0, 1.0 - ref_kept.sum()))
    cur_shares = np.append(cur_kept, n - cur_kept.sum()) / n if n else np.zeros(len(kept) + 1)
    r = _with_nulls(ref_shares, ref_null)
    c = _with_nulls(cur_shares, cur_null)
    return psi(r, c), js(r, c), total


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def compare(name: str, ref: dict[str, Any], values: Any, settings: Any,
            kind: str | None = None) -> DriftFeature:
    """One feature's scores and verdict. ``settings`` has ``psi_threshold``,
    ``ks_threshold`` and ``js_threshold`` (:class:`appliance.config.DriftSettings`)."""
    if ref.get("kind") == "categorical":
        p, j, _ = compare_categorical(ref, values)
        drifted = p > settings.psi_threshold or j > settings.js_threshold
        return DriftFeature(feature=name, kind=kind or "categorical", psi=_round(p),
                            js=_round(j), threshold=settings.psi_threshold, drifted=drifted)
    p, k, _ = compare_numeric(ref, values)
    drifted = p > settings.psi_threshold or (k is not None and k > settings.ks_threshold)
    return DriftFeature(feature=name, kind=kind or "numeric", psi=_round(p), ks=_round(k),
                        threshold=settings.psi_threshold, drifted=drifted)


def evaluate(reference: dict[str, Any], current: pl.DataFrame, settings: Any, *,
             pipeline: str, model_version: int | None, source: str,
             predictions: Any = None, computed_at: str | None = None) -> DriftReport:
    """Compare ``current`` (one column per feature, raw values as served or ingested) and
    the model's ``predictions`` on it (see :func:`prediction_values`) with ``reference``.

    The data set drifts when at least ``settings.share`` of its features drift."""
    features = []
    for name, ref in reference.get("features", {}).items():
        if name in current.columns:
            features.append(compare(name, ref, current.get_column(name), settings))
    prediction = None
    ref_pred = reference.get("prediction")
    if ref_pred and predictions is not None and len(predictions):
        prediction = compare("prediction", ref_pred, predictions, settings, kind="prediction")
    n_drifted = sum(f.drifted for f in features)
    share = n_drifted / len(features) if features else 0.0
    return DriftReport(
        pipeline=pipeline, model_version=model_version,
        computed_at=computed_at or datetime.now(UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        source=source, rows=current.height,
        drifted=bool(features) and share >= settings.share,
        drifted_share=round(share, 6), features=features, prediction=prediction,
    )


def alarm(report: DriftReport) -> bool:
    """Whether a report calls for the operator: the data set drifted, or the model's
    predictions did."""
    return report.drifted or bool(report.prediction and report.prediction.drifted)
