"""What the routes of several resources share: the 404 of an unknown pipeline, a model
record as the API shows it, and the bound of integer parameters (SQLite's int64)."""

from typing import Any

from appliance.api_types import ModelInfo, ShadowInfo
from appliance.core import ApplianceError
from appliance.serving.context import ServingContext
from appliance.store import ModelRecord

MAX_INT64 = 2**63 - 1


def known_pipeline(context: ServingContext, name: str) -> None:
    """Raise the 404 of a pipeline that is neither declared nor has received a file."""
    if name not in context.settings.pipelines and context.store.pipeline(name) is None:
        raise ApplianceError(
            "unknown_pipeline",
            f"no pipeline `{name}`; a pipeline exists once its folder inbox/{name}/ has "
            "received a file, or it is declared in appliance.toml",
            {"pipeline": name}, status=404,
        )


def model_info(r: ModelRecord, context: ServingContext | None = None,
               shadows: dict[int, Any] | None = None) -> ModelInfo:
    """A version as the API shows it; with the ``context`` (and the pipeline's shadow records
    by version, ``shadows``), its policy state and its shadow's numbers."""
    source = r.lineage.get("source")
    key_id = r.lineage.get("key_id")
    if isinstance(source, dict):  # imported: the bundle's or the model file's origin
        key_id = source.get("key_id") or key_id
        source = "bundle" if source.get("kind") == "bundle" else "model file"
    info = ModelInfo(version=r.version, stage=r.stage, task=r.task, metrics=r.metrics,
                     lineage=r.lineage, decision=r.decision, created_at=r.created_at,
                     promoted_at=r.promoted_at,
                     source=source if isinstance(source, str) and source else "trained here",
                     key_id=key_id)
    if context is None:
        return info
    scoring = context.shadows
    record = (shadows or {}).get(r.version)
    if scoring is not None and record is not None:
        n = scoring.numbers(r.pipeline, r.version)
        if n is not None:
            numbers = dict(record.numbers)
            live = {k: numbers[k] for k in ("metric", "shadow_value", "production_value",
                                            "gain", "standard_error", "z", "z_required")
                    if k in numbers}
            info.shadow = ShadowInfo(
                state=record.state, production_version=record.production_version,
                requests=n.requests, sampled=n.sampled, scored=n.scored, dropped=n.dropped,
                errors=n.errors, rows=n.rows, agreement=n.agreement, mean_diff=n.mean_diff,
                max_diff=n.max_diff, p50_ms=n.p50_ms, p99_ms=n.p99_ms,
                production_p50_ms=n.production_p50_ms, production_p99_ms=n.production_p99_ms,
                labelled=numbers.get("labelled"), live=live, decision=record.decision)
        info.policy_state = scoring.state_line(r.pipeline, r.version)
    rollout = context.rollout
    if info.policy_state is None and rollout is not None and r.stage == "production":
        watch = rollout.watches.get(r.pipeline)
        if watch is not None and watch.version == r.version:
            info.policy_state = rollout.status(r.pipeline)
    if info.policy_state is None and r.stage == "candidate" and (r.decision or "").startswith(
            "waiting for"):
        info.policy_state = "waiting for `appliance promote` (promotion.policy = manual)"
    return info
