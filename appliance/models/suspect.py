"""Suspect labels: a labelled batch on which the production model does far worse than it
did on its own validation rows, while the batch's features look as they always did, most
likely carries wrong labels (0 and 1 swapped on export, a shifted column, a join gone
wrong) rather than news about the world.

The production model scores the batch, and two one-sided tests are made at ``z``
standard errors, each sound at any size (the standard error grows as the batch shrinks,
so a small batch is flagged only when the evidence is strong):

- **worse than the trivial baseline**: the model's metric against the constant that
  predicts the training prior (or mean), paired on the same rows (DeLong's variance for the
  AUC, per-row differences for the others). A model that learned anything beats it on
  data with true labels;
- **degraded beyond the tolerance**: the batch's metric against the model's validation
  metric less ``tolerance`` of the model's edge over the baseline at validation (0.5: it
  lost more than half of what it knew), with the standard errors of both.

The metric is the pipeline's primary one when it has a per-row form and can be computed
on the batch (an AUC needs :data:`MIN_CLASS_ROWS` rows of each class); else log loss
(classification) or RMSE (regression). Batches under :data:`MIN_ROWS` labelled rows are
not judged.

What a model knows of its validation rows for this (the training prior, the standard
errors of its metrics) is kept in ``model.json`` under ``label_check``
(:func:`label_profile`); a model made before has them estimated from the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from appliance.core import ApplianceError
from appliance.features import encode_target, to_matrix
from appliance.models import metrics as m
from appliance.models.predictor import LoadedModel
from appliance.models.train import Candidate

MIN_ROWS = 20  # labelled rows a batch needs to be judged
MIN_CLASS_ROWS = 20  # rows of each class an AUC needs here; else log loss is used
MAX_ROWS = 20_000  # rows of a larger batch scored (a seeded sample): the test stays sound
# Metrics with a standard error (F1 has no per-row form).
WITH_STANDARD_ERROR = frozenset({"auc", "log_loss", "brier", "accuracy", "rmse", "mae", "r2"})
FALLBACK = {"binary": "log_loss", "multiclass": "log_loss", "regression": "rmse"}


def _metrics_for(task: str, primary: str | None) -> list[str]:
    names = [primary or m.PRIMARY[task][0], FALLBACK[task]]
    return list(dict.fromkeys(names))


def label_profile(candidate: Candidate) -> dict[str, Any]:
    """What the check needs of a model's validation, for ``model.json``: the trivial
    baseline's prediction (the training prior or mean) and the standard error of each
    metric the check may use on the validation rows."""
    task = candidate.spec.task
    errors: dict[str, float | None] = {}
    if candidate.y_valid is not None and candidate.p_valid is not None:
        for name in _metrics_for(task, candidate.metric):
            se = m.standard_error(task, name, candidate.y_valid, candidate.p_valid)
            errors[name] = se if se is not None and math.isfinite(se) else None
    prior = candidate.y_train_prior
    return {
        "prior": np.asarray(prior, dtype=np.float64).tolist() if prior is not None else None,
        "valid_rows": candidate.valid_rows,
        "standard_errors": errors,
    }


@dataclass
class LabelCheck:
    """The verdict on one batch's labels, with every number it rests on."""

    checked: bool
    suspect: bool
    reason: str
    version: int | None = None  # the production model that scored the batch
    metric: str | None = None
    rows: int = 0  # labelled rows scored
    details: dict[str, Any] = field(default_factory=dict)


def check_frame(model: LoadedModel, frame: pl.DataFrame, *, tolerance: float, z: float,
                metric: str | None = None) -> LabelCheck:
    """Score a labelled batch (with the model's features, joins done) with ``model`` and
    judge its labels. ``metric``: the pipeline's primary metric (None: the task's)."""
    spec = model.spec
    target = spec.target
    if target not in frame.columns:
        return LabelCheck(False, False, f"no target column `{target}`", model.version)
    frame = frame.filter(pl.col(target).is_not_null())
    unknown = 0
    if spec.task != "regression":  # rows of a class the model never saw can't be scored
        column = pl.col(target)
        if frame.schema[target] in (pl.Categorical, pl.Enum):
            column = column.cast(pl.String)
        kept = frame.filter(column.is_in(list(spec.classes or [])))
        unknown, frame = frame.height - kept.height, kept
    if frame.height > MAX_ROWS:
        frame = frame.sample(MAX_ROWS, seed=0)
    if frame.height < MIN_ROWS:
        return LabelCheck(False, False, f"{frame.height} labelled rows the model knows the "
                          f"classes of; at least {MIN_ROWS} are needed to judge the labels",
                          model.version, rows=frame.height)
    try:
        x = to_matrix(frame, spec)
    except ApplianceError as err:
        return LabelCheck(False, False, f"v{model.version} can't score the batch: "
                          f"{err.message}", model.version, rows=frame.height)
    p = model.predict_matrix(x)
    y = encode_target(frame.get_column(target), spec)
    verdict = judge(model.meta, spec.task, y, p, tolerance=tolerance, z=z, metric=metric)
    verdict.version = model.version
    if unknown:
        verdict.details["rows_of_unknown_classes"] = unknown
    return verdict


def _usable(name: str, y: np.ndarray, meta: dict[str, Any]) -> bool:
    """Whether the check can use ``name``: the model kept it and its baseline's, it has a
    standard error, and (an AUC) the batch has enough rows of each class."""
    if name not in WITH_STANDARD_ERROR or name not in (meta.get("metrics") or {}) or (
            name not in (meta.get("baseline_metrics") or {})):
        return False
    if name == "auc":
        pos = int((y == 1).sum())
        return min(pos, len(y) - pos) >= MIN_CLASS_ROWS
    return True


def critical(z: float, df: float) -> float:
    """Student's t quantile at the normal's one-sided level of ``z``, with ``df`` degrees of
    freedom (Cornish-Fisher, within 1e-3 of the exact value from df = 19 on): a standard
    error estimated from few rows is itself uncertain, so a small batch must miss by more
    standard errors (3.45 at 20 rows for z = 3, 3.08 at 100, 3.01 at 1,000)."""
    if df <= 0:
        return math.inf
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def _baseline(task: str, meta: dict[str, Any], p: np.ndarray) -> tuple[np.ndarray, str]:
    """The trivial model's predictions of the batch: the training prior (or mean) kept
    with the model; for a model made before it was kept, the mean of the model's own
    predictions of the batch (its features only, never its labels)."""
    prior = (meta.get("label_check") or {}).get("prior")
    n = len(p)
    if prior is None:
        prior, source = np.mean(p, axis=0), "the model's mean prediction of the batch"
    else:
        source = "the training prior" if task != "regression" else "the training mean"
    prior = np.asarray(prior, dtype=np.float64)
    if task == "multiclass":
        return np.tile(prior, (n, 1)), source
    return np.full(n, float(prior)), source


def judge(meta: dict[str, Any], task: str, y: np.ndarray, p: np.ndarray, *,
          tolerance: float, z: float, metric: str | None = None) -> LabelCheck:
    """The two tests on a batch's labels ``y`` and the model's predictions ``p``, given
    the model's ``model.json`` (its validation and baseline metrics)."""
    n = len(y)
    name = next((k for k in _metrics_for(task, metric) if _usable(k, y, meta)), None)
    if name is None:
        return LabelCheck(False, False, "no metric of the model can be computed on this "
                          "batch", rows=n)
    higher = name in m.HIGHER_IS_BETTER
    p_base, base_source = _baseline(task, meta, p)
    vs_base = m.compare(task, name, y, p, p_base)
    value = vs_base.challenger
    se = m.standard_error(task, name, y, p)
    if se is None or not math.isfinite(value):
        return LabelCheck(False, False, f"{name} can't be computed on this batch",
                          metric=name, rows=n)
    # The standard errors are estimated from the batch: from its rows, or for the AUC from
    # its smaller class.
    pos = int((y == 1).sum())
    df = (min(pos, n - pos) if name == "auc" else n) - 1
    bar = critical(z, df)
    # 1. Worse than the trivial baseline, paired on these rows.
    worse = -vs_base.gain  # > 0: the model is worse than the baseline
    se_a = vs_base.se if vs_base.se is not None and math.isfinite(vs_base.se) else None
    below_baseline = bool(se_a and worse > bar * se_a)
    # 2. Lost more than `tolerance` of its edge over the baseline at validation.
    validation = float(meta["metrics"][name])
    valid_baseline = float(meta["baseline_metrics"][name])
    edge = (validation - valid_baseline) if higher else (valid_baseline - validation)
    profile = meta.get("label_check") or {}
    se_v = (profile.get("standard_errors") or {}).get(name)
    valid_rows = profile.get("valid_rows") or meta.get("valid_rows")
    if se_v is None:  # a model made before the profile: the batch's spread, at its size
        se_v = se * math.sqrt(n / valid_rows) if valid_rows else se
    degraded = False
    threshold = shortfall = se_b = None
    if edge > 0 and math.isfinite(validation):
        threshold = validation - tolerance * edge if higher else validation + tolerance * edge
        shortfall = (threshold - value) if higher else (value - threshold)
        se_b = math.sqrt(se**2 + se_v**2)
        degraded = bool(se_b > 0 and shortfall > bar * se_b)
    suspect = below_baseline or degraded
    details = {
        "metric": name, "rows": n, "value": value, "standard_error": se,
        "validation": validation, "validation_standard_error": se_v,
        "baseline": vs_base.reference, "baseline_source": base_source,
        "worse_than_baseline": worse, "worse_than_baseline_se": se_a,
        "validation_baseline": valid_baseline, "tolerance": tolerance,
        "threshold": threshold, "shortfall": shortfall, "shortfall_se": se_b, "z": z,
        "critical": bar,
        "below_baseline": below_baseline, "degraded": degraded,
    }
    return LabelCheck(True, suspect, _reason(details, suspect), metric=name, rows=n,
                      details=details)


def _sigmas(amount: float | None, se: float | None) -> str:
    if amount is None or not se:
        return ""
    return f", {amount / se:.1f} standard errors"


def _reason(d: dict[str, Any], suspect: bool) -> str:
    """One line an operator can read, with the numbers."""
    name, z = d["metric"], d["critical"]
    head = (f"{name} {d['value']:.4f} ± {d['standard_error']:.4f} on {d['rows']:,} rows vs "
            f"{d['validation']:.4f} at validation and {d['baseline']:.4f} for the trivial "
            "baseline")
    parts = []
    if d["below_baseline"] or not suspect:
        sign = "worse" if d["worse_than_baseline"] > 0 else "better"
        se_a = d["worse_than_baseline_se"]
        parts.append(f"{sign} than the baseline by {abs(d['worse_than_baseline']):.4f}"
                     + (f" ± {se_a:.4f}" if se_a else "")
                     + (_sigmas(d["worse_than_baseline"], se_a) if d["below_baseline"]
                        else ""))
    if d["threshold"] is not None and (d["degraded"] or not suspect):
        word = "below" if d["shortfall"] > 0 else "within"
        parts.append(f"{word} the tolerated {d['threshold']:.4f} (validation less "
                     f"{d['tolerance']:g} of its edge over the baseline)"
                     + (_sigmas(d["shortfall"], d["shortfall_se"]) if d["degraded"] else ""))
    verdict = (f"suspect (more than {z:.2f} standard errors)" if suspect
               else f"plausible (a flag needs more than {z:.2f} standard errors)")
    return f"{head}: {'; '.join(parts)}: {verdict}"
