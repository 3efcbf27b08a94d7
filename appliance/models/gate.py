"""The gate: whether a newly trained candidate may replace the production model.

It compares both on the same rows, the candidate's held-out rows (the newest data), with a
paired test of the metric's difference; the first model of a pipeline is compared with the
trivial baseline (the class prior or the mean) instead. The verdict keeps every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from appliance.core import ApplianceError
from appliance.features import FeatureSpec, encode_target, to_matrix
from appliance.models import metrics as m
from appliance.models.predictor import LoadedModel
from appliance.models.train import Candidate


def champion_predictions(model: LoadedModel, frame: pl.DataFrame, spec: FeatureSpec,
                         threads: int = 1) -> np.ndarray | None:
    """An existing model's predictions of a candidate's validation frame, or None when it
    can't score it (its features are missing, or the classes changed)."""
    if model.spec.task != spec.task or model.spec.classes != spec.classes:
        return None
    try:
        x = to_matrix(frame, model.spec)
    except ApplianceError:
        return None
    return model.booster.predict(x, num_threads=threads)


def score(model: LoadedModel, frame: pl.DataFrame, spec: FeatureSpec) -> dict[str, float] | None:
    """The metrics of an existing model on a candidate's validation frame, or None when it
    can't score it (its features are missing, or the classes changed)."""
    p = champion_predictions(model, frame, spec)
    if p is None:
        return None
    y = encode_target(frame.get_column(spec.target), spec)
    return m.evaluate(spec.task, y, p)


@dataclass
class Decision:
    promote: bool
    reason: str
    champion_metrics: dict[str, float] | None
    details: dict[str, Any] | None = None


def decide(candidate: Candidate, champion: LoadedModel | None, min_improvement: float,
           metric: str | None = None, *, champion_z: float = 0.0, baseline_z: float = 0.0,
           threads: int = 1) -> Decision:
    """The gate: a challenger replaces the champion only when it is better on the same,
    newest validation data (by ``min_improvement``, and by ``champion_z`` standard errors
    of the paired difference); the first model must beat the trivial baseline by
    ``baseline_z`` standard errors. The reason says which, with the numbers."""
    spec = candidate.spec
    task = spec.task
    name = metric or candidate.metric or m.primary_metric(task)
    y, p_new = candidate.y_valid, candidate.p_valid
    if champion is not None:
        p_champ = champion_predictions(champion, candidate.valid_frame, spec, threads)
        if p_champ is not None:
            c = m.compare(task, name, y, p_new, p_champ)
            ok, why = m.passes(c, min_improvement, champion_z)
            return Decision(ok, f"vs production v{champion.version}: {why}",
                            m.evaluate(task, y, p_champ),
                            _gate_details(f"v{champion.version}", c, min_improvement,
                                          champion_z, ok))
        why_base = (f"production v{champion.version} can't score the new data (its features "
                    "or classes differ); ")
    else:
        why_base = ""
    n = len(y)
    p_base = (np.tile(candidate.y_train_prior, (n, 1)) if task == "multiclass"
              else np.full(n, float(candidate.y_train_prior)))
    c = m.compare(task, name, y, p_new, p_base)
    ok, why = m.passes(c, 0.0, baseline_z)
    return Decision(ok, f"{why_base}vs the baseline (class prior or mean): {why}", None,
                    _gate_details("baseline", c, 0.0, baseline_z, ok))


def _gate_details(against: str, c: m.Comparison, min_improvement: float, z: float,
                  ok: bool) -> dict[str, Any]:
    return {"against": against, "metric": c.metric, "challenger": c.challenger,
            "reference": c.reference, "gain": c.gain, "standard_error": c.se,
            "min_improvement": min_improvement, "z": z, "promoted": ok}
