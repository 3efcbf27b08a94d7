"""The profile of a model's training data: per feature its distribution (deciles,
percentiles, category shares, the share missing), and that of the model's outputs.

It is computed when a model is trained and saved in ``model.json`` under ``"reference"``;
monitoring's drift check (:mod:`appliance.monitoring.drift`) compares new data with it.
Pure functions over NumPy and Polars.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from appliance.features.spec import FeatureSpec, category_counts

MIN_REFERENCE_COUNT = 20  # a category is kept when seen at least this often in the reference
OTHER = "__other__"
TOP_CATEGORIES = 100
GRID = np.linspace(0.0, 1.0, 101)  # the percentiles kept for KS
DECILES = np.linspace(0.1, 0.9, 9)

NUMERIC_KINDS = ("numeric", "boolean")


def as_float(values: pl.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """Float64 values with NaN for missing; booleans as 0/1."""
    if isinstance(values, pl.Series):
        s = values
        if s.dtype != pl.Float64:
            s = s.cast(pl.Float64, strict=False)
        return s.to_numpy()
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = pl.Series(list(values), dtype=pl.Float64, strict=False).to_numpy()
    return arr.astype(np.float64, copy=False)


def sorted_valid(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The non-missing values sorted (one sort; NaN sorts last), and the total count.

    Values are compared at float32 precision: a model's outputs for equal inputs differ in
    their last bits with the order of a sum (batch or single row), and a bin edge must not
    split such ties, or a calm batch of predictions looks drifted."""
    s = np.sort(values.astype(np.float32)).astype(np.float64)
    n_valid = int(np.searchsorted(s, np.inf, side="right"))
    return s[:n_valid], len(values)


def numeric_stats(values: pl.Series | np.ndarray | Sequence[Any]) -> dict[str, Any]:
    """Deciles, percentiles and the share of missing values of a numeric column."""
    s, total = sorted_valid(as_float(values))
    n = len(s)
    out: dict[str, Any] = {"kind": "numeric", "count": total,
                           "null_fraction": (total - n) / total if total else 0.0}
    if n == 0:
        out.update(bin_edges=[], bin_fractions=[1.0], quantiles=[], cdf=[])
        return out
    q = np.quantile(s, GRID, method="lower")
    grid = np.unique(q)
    edges = np.unique(np.quantile(s, DECILES, method="lower"))
    # Right-closed bins (e[i-1], e[i]]: the count of x <= e is searchsorted(..., "right").
    le = np.searchsorted(s, edges, side="right")
    counts = np.diff(np.concatenate(([0], le, [n])))
    out.update(
        bin_edges=edges.tolist(),
        bin_fractions=(counts / n).tolist(),
        quantiles=grid.tolist(),
        cdf=(np.searchsorted(s, grid, side="right") / n).tolist(),
    )
    return out


def categorical_stats(values: pl.Series | Sequence[Any]) -> dict[str, Any]:
    """The shares of the most frequent categories (the rest as ``__other__``) and of
    missing values."""
    s = values if isinstance(values, pl.Series) else pl.Series(list(values), strict=False)
    s = s.cast(pl.String, strict=False)
    total = len(s)
    nulls = s.null_count()
    n = total - nulls
    fractions: dict[str, float] = {}
    if n:
        values, counts = category_counts(s)
        # A category seen only a few times has a share too noisy to compare (and picking
        # the top ones by their own counts inflates them): those join __other__.
        kept = 0
        for cat, count in zip(values[:TOP_CATEGORIES], counts[:TOP_CATEGORIES], strict=True):
            if count >= MIN_REFERENCE_COUNT:
                fractions[str(cat)] = count / n
                kept += count
        rest = n - kept
        if rest:
            fractions[OTHER] = rest / n
    return {"kind": "categorical", "count": total,
            "null_fraction": nulls / total if total else 0.0, "fractions": fractions}


def prediction_values(task: str, raw: np.ndarray, classes: Sequence[Any] | None) -> Any:
    """The served prediction in the form drift compares: P(positive) or the value as
    floats; the predicted class (as text) for multiclass."""
    if task == "multiclass":
        labels = [str(c) for c in classes or []]
        return pl.Series("prediction", [labels[i] for i in np.argmax(raw, axis=1)],
                         dtype=pl.String)
    return np.asarray(raw, dtype=np.float64)


def reference_stats(frame: pl.DataFrame, spec: FeatureSpec,
                    predictions: np.ndarray | None = None) -> dict[str, Any]:
    """The reference of a model: per feature (by raw column name) its distribution in
    ``frame`` (the training split), and the distribution of the model's ``predictions``
    (raw outputs). Date and datetime features are left out: their values never repeat,
    so drift over them is always "drift"."""
    features: dict[str, Any] = {}
    for f in spec.features:
        if f.name not in frame.columns:
            continue
        col = frame.get_column(f.name)
        if f.kind in NUMERIC_KINDS:
            features[f.name] = numeric_stats(col)
        elif f.kind == "categorical":
            features[f.name] = categorical_stats(col)
    return {"rows": frame.height, "features": features,
            "prediction": prediction_stats(spec, predictions)}


def prediction_stats(spec: FeatureSpec, predictions: np.ndarray | None) -> dict[str, Any] | None:
    """The reference distribution of a model's raw outputs (None without outputs)."""
    if predictions is None or not len(predictions):
        return None
    values = prediction_values(spec.task, np.asarray(predictions), spec.classes)
    return categorical_stats(values) if spec.task == "multiclass" else numeric_stats(values)


