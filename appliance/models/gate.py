"""The gate: whether a newly trained candidate (the challenger) may replace the
production model (the champion).

Three one-sided tests, each with its numbers kept; the challenger is promoted only when
all three let it through:

1. **baseline**: on the challenger's held-out rows (the newest data), it beats the
   trivial model (the class prior or the mean) by ``baseline_z`` standard errors. A model
   that learned nothing (shuffled labels) or learned the opposite (inverted labels) fails
   here, however bad the champion looks on those rows.
2. **champion**: on the same rows, it beats the champion by more than ``min_improvement``
   and by ``champion_z`` standard errors of the paired difference (DeLong's for the AUC,
   per-row differences for the metrics that are means over rows, a paired bootstrap for
   F1). A challenger exactly as good as the champion passes with the normal tail's
   probability beyond ``champion_z`` (2.3% at 2).
3. **champion's rows**: on the champion's own held-out rows (older data; kept beside its
   model, see :mod:`appliance.models.holdout`), the challenger is not worse than the
   champion by ``regression_z`` standard errors: a model that forgot what the champion
   knew is kept out. Rows outside the challenger's data window (``window_days``,
   ``window_rows``) are obsolete by the operator's word and are not scored; when none is
   left, the test is not made, and the verdict says so.

The first model of a pipeline (or one whose champion can't score the new data: features
or classes changed) faces the baseline alone, plus the champion's rows when it can score
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class PastRows:
    """The champion's own held-out rows, as far as the challenger's data window holds
    them (``frame``), or why there are none to score (``note``)."""

    version: int
    frame: pl.DataFrame | None
    kept: int = 0  # rows kept with the champion
    note: str | None = None  # why they are not scored
    window: str | None = None  # the challenger's data window, when one is configured
    status: str = "checked"  # or not_kept, unreadable, obsolete


@dataclass
class Check:
    """One test of the gate, with its numbers."""

    kind: str  # "baseline" | "champion" | "champion_rows"
    against: str  # "baseline" | "v3"
    rows: int
    comparison: m.Comparison | None
    margin: float
    z: float  # the standard errors the test asks for
    passed: bool
    text: str
    status: str = "checked"  # or why it was not made: not_kept, obsolete, unscorable...
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        c = self.comparison
        out: dict[str, Any] = {"against": self.against, "rows": self.rows,
                               "status": self.status, "passed": self.passed,
                               "margin": self.margin, "z_required": self.z}
        if c is not None:
            out.update(metric=c.metric, challenger=c.challenger, reference=c.reference,
                       gain=c.gain, standard_error=c.se,
                       z=m.standard_errors(c, self.margin))
        out.update(self.extra)
        out["text"] = self.text
        # JSON has no NaN or infinity (a metric on one class, a zero standard error).
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v
                for k, v in out.items()}


@dataclass
class Decision:
    promote: bool
    reason: str
    champion_metrics: dict[str, float] | None
    details: dict[str, Any] | None = None


def decide(candidate: Candidate, champion: LoadedModel | None, min_improvement: float,
           metric: str | None = None, *, champion_z: float = 0.0, baseline_z: float = 0.0,
           regression_z: float = 0.0, past: PastRows | None = None,
           threads: int = 1) -> Decision:
    """The gate's verdict on ``candidate``: the three tests above, their numbers in
    ``details`` (as kept in the lineage and model.json) and in one line, ``reason``."""
    spec = candidate.spec
    task = spec.task
    name = metric or candidate.metric or m.primary_metric(task)
    y, p_new = candidate.y_valid, candidate.p_valid
    n = len(y)
    where = (f"on its {n} held-out rows (the newest)" if candidate.split == "chronological"
             else f"on its {n} held-out rows")
    p_base = (np.tile(candidate.y_train_prior, (n, 1)) if task == "multiclass"
              else np.full(n, float(candidate.y_train_prior)))
    c_base = m.compare(task, name, y, p_new, p_base)
    ok, why = m.passes(c_base, 0.0, baseline_z)
    baseline = Check("baseline", "baseline", n, c_base, 0.0, baseline_z, ok,
                     f"vs the baseline (class prior or mean): {why}")
    needed = None if ok else m.rows_to_show(c_base, 0.0, baseline_z, n)
    if needed is not None:   # too few rows to tell, not a model that learned nothing
        baseline.extra["rows_to_show"] = needed
    champ: Check | None = None
    champion_metrics = None
    if champion is not None:
        p_champ = champion_predictions(champion, candidate.valid_frame, spec, threads)
        if p_champ is not None:
            c = m.compare(task, name, y, p_new, p_champ)
            ok, why = m.passes(c, min_improvement, champion_z)
            champ = Check("champion", f"v{champion.version}", n, c, min_improvement,
                          champion_z, ok, f"vs production v{champion.version}: {why}")
            champion_metrics = m.evaluate(task, y, p_champ)
        else:
            champ = Check("champion", f"v{champion.version}", n, None, min_improvement,
                          champion_z, True,
                          f"production v{champion.version} can't score the new data (its "
                          "features or classes differ)", status="unscorable")
    checks = [champ, baseline] if champ is not None else [baseline]
    if champion is not None and past is not None:
        checks.append(_past_check(candidate, champion, past, name, regression_z, threads))
    promote = all(ch.passed for ch in checks)
    if champ is not None and champ.status == "checked":
        # The baseline beside the champion, short: the challenger's value was just shown.
        lead = f"{champ.text}; vs the baseline {m.passes(c_base, 0.0, baseline_z, True)[1]}"
    elif champ is not None:
        lead = f"{champ.text}; {baseline.text}"
    else:
        lead = baseline.text
    reason = f"{lead}; {where}" + "".join(f". {ch.text}" for ch in checks[2:])
    if needed is not None:
        reason += (f". Too few rows to tell: if its gain over the baseline holds, it needs "
                   f"about {needed} held-out rows to be shown (more data will tell)")
    primary = champ if champ is not None and champ.comparison is not None else baseline
    return Decision(promote, reason, champion_metrics,
                    _details(primary, checks, promote, name, reason))


def _past_check(candidate: Candidate, champion: LoadedModel, past: PastRows, metric: str,
                z: float, threads: int) -> Check:
    """Test 3: the challenger beside the champion on the champion's own held-out rows."""
    v = f"v{champion.version}"
    extra = {"version": champion.version, "rows_kept": past.kept, "window": past.window}
    if past.frame is None:
        return Check("champion_rows", v, 0, None, 0.0, z, True,
                     f"{v}'s held-out rows {past.note}: not checked", status=past.status,
                     extra=extra)
    frame = past.frame
    held = f"{frame.height} of {v}'s {past.kept} held-out rows still in the data window " \
           f"({past.window})" if frame.height < past.kept else \
           f"{v}'s {frame.height} held-out rows"
    spec = candidate.spec
    target = spec.target
    if target in frame.columns:
        frame = frame.filter(pl.col(target).is_not_null())
    p_champ = champion_predictions(champion, frame, spec, threads)
    try:
        p_new = (candidate.booster.predict(to_matrix(frame, spec), num_threads=threads)
                 if p_champ is not None else None)
        y = encode_target(frame.get_column(target), spec) if p_new is not None else None
    except (ApplianceError, pl.exceptions.PolarsError):
        p_new = y = None
    if p_new is None or y is None or p_champ is None:
        return Check("champion_rows", v, frame.height, None, 0.0, z, True,
                     f"this version can't score {v}'s held-out rows (features or classes "
                     "differ): not checked", status="unscorable", extra=extra)
    c = m.compare(spec.task, metric, y, p_new, p_champ)
    worse, why = m.significant_loss(c, z)
    text = f"On {held}: {why}"
    if np.isnan(c.challenger) or np.isnan(c.reference):
        return Check("champion_rows", v, frame.height, c, 0.0, z, True, text,
                     status="uncomputable", extra=extra)
    if worse:
        text += (f", a regression on what {v} knew (if that data is obsolete, a data window "
                 f"retires it: [pipelines.{champion.pipeline}.train] window_days or window_rows)")
    return Check("champion_rows", v, frame.height, c, 0.0, z, not worse, text, extra=extra)


def _details(primary: Check, checks: list[Check], promote: bool, metric: str,
             reason: str) -> dict[str, Any]:
    """The verdict as kept in the lineage and model.json: the deciding comparison on the
    newest rows at the top (as before), and every test with its numbers."""
    c = primary.comparison
    out: dict[str, Any] = {"against": primary.against, "metric": metric,
                           "min_improvement": primary.margin, "z": primary.z,
                           "promoted": promote}
    if c is not None:
        out.update({k: v if v is None or np.isfinite(v) else None for k, v in (
            ("challenger", c.challenger), ("reference", c.reference), ("gain", c.gain),
            ("standard_error", c.se))})
    out["tests"] = {ch.kind: ch.as_dict() for ch in checks}
    out["reason"] = reason
    return out


def numbers(details: dict[str, Any]) -> dict[str, Any]:
    """The verdict's numbers without its sentences (the event's message is the reason): what
    the ``promoted`` and ``not_promoted`` events carry, so the journal line stays short."""
    out = {k: v for k, v in details.items() if k not in ("reason", "tests")}
    out["tests"] = {kind: {k: v for k, v in test.items() if k != "text"}
                    for kind, test in (details.get("tests") or {}).items()}
    return out

