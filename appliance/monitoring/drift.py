"""Data drift: how far new data is from the profile of a model's training data, and
whether the pipeline's data drifted.

Pure functions over NumPy and Polars; no I/O, no store. The profile
(:func:`appliance.features.profile.reference_stats`) summarises the training split when a
model is trained (it is saved in ``model.json`` under ``"reference"``); ``evaluate``
compares a current sample with it and returns a :class:`~appliance.api_types.DriftReport`.
The per-feature statistics are :mod:`appliance.monitoring.drift_stats`.

Statistics chosen by sample size (as Evidently does, switching after 1,000 rows):

- a sample of at most ``drift.test_max_rows`` rows is *tested*: per numeric feature the
  two-sample Kolmogorov-Smirnov test and a chi-square test over bins of equal reference
  mass, per categorical feature a chi-square test over its categories, and per feature
  Fisher's exact test of the share of missing values. All the p-values of a check (the
  predictions' too) are corrected together by Holm's method, so that with no drift the
  chance that the check flags anything at all stays under ``drift.alpha``. A test of the
  missing share counts only when the share moved by at least ``MIN_NULL_CHANGE``;
- a larger sample is judged by *effect sizes*, with the thresholds the established tools
  use: PSI above 0.2 is a significant shift (the credit-scoring rule of thumb); a KS
  statistic above 0.2 (Deepchecks' default); a Jensen-Shannon distance above 0.1
  (Evidently's default). With many rows every test rejects a difference too small to
  matter; an effect size says whether it matters. *And* a seeded sample of
  ``drift.test_max_rows`` of its rows is tested as above: a large batch is never judged
  less sensitively than a batch of that size would be (an SD x 1.5 change has a PSI of
  about 0.19: effect sizes alone missed it in more than half of 10,000-row batches that
  the tests at 1,000 rows all caught), and the tests' false alarms stay those of a
  1,000-row batch (under ``drift.alpha``), since the sample, not the batch, sets their
  power.

The headline: the data set drifts when at least ``drift.share`` of its features drift, or
the drifted ones carry at least ``drift.importance_share`` of the production model's gain
importance, or one feature drifts severely: its PSI above ``drift.severe_psi`` (1.0), or
every value missing in a sample of at least ``MIN_EMPTY_ROWS`` (a column gone empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from appliance.api_types import DriftFeature, DriftReport
from appliance.monitoring.drift_stats import (
    EPS,
    MIN_EXPECTED,
    NOISE_BUDGET,
    Measure,
    holm,
    js,
    ks,
    max_bins,
    measure_categorical,
    measure_numeric,
    psi,
)

__all__ = [
    "EPS", "MIN_EXPECTED", "NOISE_BUDGET", "alarm", "compare", "compare_categorical",
    "compare_numeric", "evaluate", "headline", "js", "ks", "max_bins", "psi",
]

MIN_NULL_CHANGE = 0.05  # a tested change of the missing share counts from 5 points
MIN_EMPTY_ROWS = 30  # a column all missing is severe drift from this many rows


def compare_numeric(ref: dict[str, Any], values: Any) -> tuple[float, float | None, int]:
    """(PSI, KS, rows) of current ``values`` against a numeric reference."""
    m = measure_numeric(ref, values)
    return m.psi, m.ks, m.rows


def compare_categorical(ref: dict[str, Any], values: Any) -> tuple[float, float, int]:
    """(PSI, JS distance, rows) of current ``values`` against a categorical reference."""
    m = measure_categorical(ref, values)
    return m.psi, m.js or 0.0, m.rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _measure(ref: dict[str, Any], values: Any, tests: bool) -> Measure:
    if ref.get("kind") == "categorical":
        return measure_categorical(ref, values, tests)
    return measure_numeric(ref, values, tests)


def _by_effect_size(ref: dict[str, Any], m: Measure, settings: Any) -> bool:
    if ref.get("kind") == "categorical":
        return m.psi > settings.psi_threshold or (m.js or 0.0) > settings.js_threshold
    return m.psi > settings.psi_threshold or (m.ks is not None
                                               and m.ks > settings.ks_threshold)


def _feature(name: str, kind: str, m: Measure, drifted: bool, settings: Any,
             p_value: float | None = None, test: str | None = None) -> DriftFeature:
    severe = drifted and (m.psi > settings.severe_psi or (
        m.valid == 0 and m.rows >= MIN_EMPTY_ROWS and m.ref_null_share < 1.0))
    return DriftFeature(
        feature=name, kind=kind, psi=_round(m.psi), ks=_round(m.ks), js=_round(m.js),
        threshold=settings.psi_threshold, drifted=drifted, p_value=_round(p_value),
        test=test, null_share=_round(m.null_share), severe=severe,
    )


def compare(name: str, ref: dict[str, Any], values: Any, settings: Any,
            kind: str | None = None) -> DriftFeature:
    """One feature's scores and its verdict by effect size. ``settings`` has
    ``psi_threshold``, ``ks_threshold``, ``js_threshold`` and ``severe_psi``
    (:class:`appliance.core.DriftSettings`)."""
    m = _measure(ref, values, tests=False)
    default = "categorical" if ref.get("kind") == "categorical" else "numeric"
    return _feature(name, kind or default, m, _by_effect_size(ref, m, settings), settings)


def _tested(measured: list[tuple[str, str, dict[str, Any], Measure]],
            settings: Any) -> list[DriftFeature]:
    """The verdicts of a tested sample: every p-value of every feature, Holm-corrected
    together, compared with ``settings.alpha``."""
    flat = [(i, test, p) for i, (_, _, _, m) in enumerate(measured) for test, p in m.tests]
    adjusted = holm([p for _, _, p in flat])
    best: dict[int, tuple[float, str]] = {}
    for (i, test, _), adj in zip(flat, adjusted, strict=True):
        m = measured[i][3]
        if test == "missing" and abs(m.null_share - m.ref_null_share) < MIN_NULL_CHANGE:
            continue  # a change too small to matter, however sure
        if i not in best or adj < best[i][0]:
            best[i] = (adj, test)
    out = []
    for i, (name, kind, _, m) in enumerate(measured):
        p, test = best.get(i, (1.0, None))
        out.append(_feature(name, kind, m, p <= settings.alpha, settings, p, test))
    return out


SAMPLE_SEED = 20260114  # the tested sample of a large batch: the same rows every time


def _sampled_and_sized(measured: list[tuple[str, str, dict[str, Any], Measure]],
                       current: pl.DataFrame, predictions: Any,
                       settings: Any) -> list[DriftFeature]:
    """A large sample's verdicts: a feature drifts when its effect size passes its threshold
    (on every row) or the tests reject on a seeded sample of ``test_max_rows`` rows
    (Holm-corrected together, as a sample of that size would be)."""
    n = current.height
    if settings.test_max_rows < 1:   # tests turned off: effect sizes alone
        return [_feature(name, kind, m, _by_effect_size(ref, m, settings), settings)
                for name, kind, ref, m in measured]
    picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(
        n, size=settings.test_max_rows, replace=False))
    sample = current[picked]
    tested = []
    for name, kind, ref, _ in measured:
        if kind == "prediction":  # P(positive) or values (NumPy), or classes (a Series)
            values = (predictions.gather(picked) if isinstance(predictions, pl.Series)
                      else np.asarray(predictions)[picked])
        else:
            values = sample.get_column(name)
        tested.append((name, kind, ref, _measure(ref, values, True)))
    by_test = _tested(tested, settings)
    out = []
    for (name, kind, ref, m), t in zip(measured, by_test, strict=True):
        sized = _by_effect_size(ref, m, settings)
        out.append(_feature(name, kind, m, sized or t.drifted, settings,
                            t.p_value, t.test))
    return out


def evaluate(reference: dict[str, Any], current: pl.DataFrame, settings: Any, *,
             pipeline: str, model_version: int | None, source: str,
             predictions: Any = None, computed_at: str | None = None,
             importance: Mapping[str, float] | None = None) -> DriftReport:
    """Compare ``current`` (one column per feature, raw values as served or ingested) and
    the model's ``predictions`` on it (see :func:`prediction_values`) with ``reference``.

    ``importance`` is the production model's gain importance per feature (raw column
    name; features not compared count in the total). Small samples are tested, large
    ones judged by effect sizes (see the module's docstring)."""
    tests = current.height <= settings.test_max_rows
    measured: list[tuple[str, str, dict[str, Any], Measure]] = []
    for name, ref in reference.get("features", {}).items():
        if name in current.columns:
            kind = "categorical" if ref.get("kind") == "categorical" else "numeric"
            measured.append((name, kind, ref, _measure(ref, current.get_column(name), tests)))
    ref_pred = reference.get("prediction")
    with_prediction = bool(ref_pred and predictions is not None and len(predictions))
    if with_prediction:
        measured.append(("prediction", "prediction", ref_pred,
                         _measure(ref_pred, predictions, tests)))
    if tests:
        verdicts = _tested(measured, settings)
    else:
        verdicts = _sampled_and_sized(measured, current, predictions if with_prediction
                                      else None, settings)
    prediction = verdicts.pop() if with_prediction else None
    features = verdicts
    total_gain = sum(max(0.0, float(g)) for g in (importance or {}).values())
    importance_share = None
    if total_gain > 0:
        for f in features:
            f.importance = _round(max(0.0, float(importance.get(f.feature, 0.0)))  # type: ignore[union-attr]
                                  / total_gain)
        importance_share = round(sum(f.importance or 0.0 for f in features if f.drifted), 6)
    n_drifted = sum(f.drifted for f in features)
    share = n_drifted / len(features) if features else 0.0
    severe = [f.feature for f in features if f.severe]
    drifted = bool(features) and (
        share >= settings.share or bool(severe)
        or (importance_share is not None and importance_share >= settings.importance_share))
    report = DriftReport(
        pipeline=pipeline, model_version=model_version,
        computed_at=computed_at or datetime.now(UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        source=source, rows=current.height, drifted=drifted,
        drifted_share=round(share, 6), features=features, prediction=prediction,
        importance_share=importance_share, severe=severe,
        method="tests" if tests else "effect_sizes",
    )
    report.summary = headline(report)
    return report


def alarm(report: DriftReport) -> bool:
    """Whether a report calls for the operator: the data set drifted (the headline), or
    the model's predictions did. True means the data set drifted."""
    return report.drifted or bool(report.prediction and report.prediction.drifted)


def _why(f: DriftFeature) -> str:
    if f.severe and f.null_share is not None and f.null_share >= 1.0:
        return f"{f.feature} (severe: every value missing)"
    if f.severe:
        return f"{f.feature} (severe: PSI {f.psi:.2f})"
    return f.feature


def headline(report: DriftReport) -> str:
    """The report in one line, e.g. ``drift: 3 of 9 features (33%), carrying 41% of the
    model's gain: temperature_c (severe: PSI 1.52), humidity_pct, vibration_mm_s · 1,500
    rows, effect sizes``."""
    n = len(report.features)
    drifted = [f for f in report.features if f.drifted]
    parts = [f"{len(drifted)} of {n} features ({report.drifted_share * 100:.0f}%)"]
    if report.importance_share is not None:
        parts.append(f"carrying {report.importance_share * 100:.0f}% of the model's gain")
    line = ("drift: " if report.drifted else "no drift: ") + ", ".join(parts)
    if drifted:
        named = [_why(f) for f in sorted(drifted, key=lambda f: (not f.severe,
                                                                 -(f.importance or 0.0)))]
        line += ": " + ", ".join(named[:6])
        line += ", ..." if len(named) > 6 else ""
    if report.prediction is not None and report.prediction.drifted:
        line += "; the predictions drifted"
    how = {"tests": "tests", "effect_sizes": "effect sizes"}.get(report.method or "", "")
    line += f" · {report.rows:,} rows" + (f", {how}" if how else "")
    return line
