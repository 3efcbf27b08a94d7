"""The pipeline's promotion policy, applied to a candidate made elsewhere (an imported
bundle, a bare LightGBM model): ``[pipelines.NAME.promotion] policy``.

- ``gate``: the candidate is scored beside production on this box's own newest labelled
  held-out rows (the ``holdout.parquet`` kept with the newest version trained here), by the
  gate's first two tests (see :mod:`appliance.models.gate`): it must beat the trivial
  baseline by ``train.baseline_z`` standard errors and production by more than
  ``min_improvement`` by ``train.champion_z``. No production model: the candidate is
  promoted when it passes the baseline test, or, with no labelled rows on this box at
  all, as the pipeline's first model (said so in the reason). Production but no rows to
  score both on: it stays a candidate (``appliance promote`` decides).
- ``manual``: it stays a candidate until ``appliance promote``.

:func:`apply_policy` is the one call an import makes after registering the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from appliance.core import ApplianceError, Settings, StateDir
from appliance.features import encode_target, to_matrix
from appliance.models import metrics as m
from appliance.models.holdout import read_holdout
from appliance.models.production import Production
from appliance.store import Events, Store

SCORE_THREADS = 1


@dataclass
class PolicyParts:
    """What applying a policy needs of the daemon."""

    state: StateDir
    store: Store
    events: Events
    settings: Settings
    production: Production


@dataclass
class PolicyOutcome:
    policy: str
    stage: str  # production | candidate | rejected
    reason: str
    gate: dict[str, Any] | None = None


def apply_policy(parts: PolicyParts, pipeline: str, version: int) -> PolicyOutcome:
    """Apply ``pipeline``'s promotion policy to its candidate ``version`` (registered, not
    serving): promote it, reject it, or leave it a candidate, with the reason recorded on
    the version and in an event."""
    policy = parts.settings.pipeline(pipeline).promotion.policy
    if policy == "manual":
        reason = ("policy manual: a candidate until an operator promotes it (appliance "
                  f"promote {pipeline} {version})")
        parts.store.set_model_stage(pipeline, version, "candidate", reason)
        return PolicyOutcome(policy, "candidate", reason)
    promote, reason, gate = _gate(parts, pipeline, version)
    if promote is True:
        parts.production.promote(pipeline, version, reason, gate=gate)
        return PolicyOutcome(policy, "production", reason, gate)
    if promote is False:
        parts.store.set_model_stage(pipeline, version, "rejected", reason)
        parts.events.emit("not_promoted", f"v{version}: {reason}", pipeline=pipeline,
                          version=version, gate=gate)
        return PolicyOutcome(policy, "rejected", reason, gate)
    parts.store.set_model_stage(pipeline, version, "candidate", reason)
    return PolicyOutcome(policy, "candidate", reason, gate)


def _newest_rows(parts: PolicyParts, pipeline: str, skip: int
                 ) -> tuple[int, dict[str, Any], pl.DataFrame] | None:
    """The held-out rows kept with the newest version that kept them (trained here)."""
    registry = parts.production.registry
    for record in parts.store.models(pipeline):  # newest first
        if record.version == skip:
            continue
        try:
            _, _, meta = registry.load_booster(pipeline, record.version)
            if not meta.get("holdout"):
                continue
            rows = read_holdout(parts.state.root / record.path, meta["holdout"],
                                f"v{record.version} of `{pipeline}`")
        except ApplianceError:
            continue
        return record.version, meta, rows
    return None


def _gate(parts: PolicyParts, pipeline: str, version: int
          ) -> tuple[bool | None, str, dict[str, Any] | None]:
    """(promote: True, reject: False, undecided: None), the reason, the numbers."""
    registry = parts.production.registry
    booster, spec, _ = registry.load_booster(pipeline, version)
    champion = parts.production.live.get(pipeline)
    source = _newest_rows(parts, pipeline, version)
    if source is None:
        if champion is None:
            return True, ("policy gate: no labelled held-out rows on this box to score it on, "
                          "and no production model: promoted as the pipeline's first model"), None
        return None, (f"policy gate: no labelled held-out rows on this box to score it beside "
                      f"production v{champion.version}; it stays a candidate (appliance promote "
                      f"{pipeline} {version})"), None
    rows_version, meta, rows = source
    ts = parts.settings.train
    settings = parts.settings.pipeline(pipeline)
    metric = m.primary_metric(spec.task, settings.train.metric)
    min_improvement = (settings.train.min_improvement
                       if settings.train.min_improvement is not None else ts.min_improvement)
    where = f"on v{rows_version}'s {{n}} held-out rows (this box's newest labelled data)"
    try:
        rows = rows.filter(pl.col(spec.target).is_not_null())
        y = encode_target(rows.get_column(spec.target), spec)
        p_new = np.asarray(booster.predict(to_matrix(rows, spec), num_threads=SCORE_THREADS))
    except (ApplianceError, pl.exceptions.PolarsError, KeyError) as exc:
        why = getattr(exc, "message", None) or str(exc)
        return None, (f"policy gate: it can't score this box's held-out rows of "
                      f"v{rows_version} ({why}); it stays a candidate"), None
    n = len(y)
    if n == 0 or np.isnan(y).any():
        return None, (f"policy gate: v{rows_version}'s held-out rows have no labels it can "
                      "score (its classes differ); it stays a candidate"), None
    prior = (meta.get("holdout") or {}).get("baseline_prior")
    tests: dict[str, Any] = {}
    texts: list[str] = []
    verdicts: list[bool] = []
    if prior is not None:
        p_base = (np.tile(np.asarray(prior, dtype=np.float64), (n, 1))
                  if spec.task == "multiclass" else np.full(n, float(np.ravel(prior)[0])))
        if p_base.shape[1:] == p_new.shape[1:]:
            c = m.compare(spec.task, metric, y, p_new, p_base)
            ok, why = m.passes(c, 0.0, ts.baseline_z)
            tests["baseline"] = _numbers(c, ok)
            texts.append(f"vs the baseline: {why}")
            verdicts.append(ok)
    if champion is not None:
        p_champ = None
        if champion.spec.task == spec.task and champion.spec.classes == spec.classes:
            try:
                p_champ = np.asarray(champion.booster.predict(
                    to_matrix(rows, champion.spec), num_threads=SCORE_THREADS))
            except ApplianceError:
                p_champ = None
        if p_champ is None:
            return None, (f"policy gate: production v{champion.version} can't score v"
                          f"{rows_version}'s held-out rows beside it (features or classes "
                          "differ); it stays a candidate"), {"tests": tests}
        c = m.compare(spec.task, metric, y, p_new, p_champ)
        ok, why = m.passes(c, min_improvement, ts.champion_z)
        tests["champion"] = _numbers(c, ok)
        texts.insert(0, f"vs production v{champion.version}: {why}")
        verdicts.insert(0, ok)
    if not verdicts:
        return None, "policy gate: nothing to compare it with; it stays a candidate", None
    promote = all(verdicts)
    reason = "policy gate: " + "; ".join(texts) + "; " + where.format(n=n)
    gate = {"metric": metric, "rows": n, "rows_from_version": rows_version,
            "promoted": promote, "tests": tests}
    return promote, reason, gate


def _numbers(c: m.Comparison, passed: bool) -> dict[str, Any]:
    out = {"challenger": c.challenger, "reference": c.reference, "gain": c.gain,
           "standard_error": c.se, "passed": passed}
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v
            for k, v in out.items()}
