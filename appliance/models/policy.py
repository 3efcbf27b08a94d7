"""The promotion policy: how a registered candidate may become production, per pipeline
(``[pipelines.NAME.promotion] policy``), whether it was trained here or imported.

- ``gate`` (the default): the gate's verdict (:mod:`appliance.models.gate`) on this box's
  newest labelled data: promoted when it passed, rejected with the reason when not.
- ``shadow``: the candidate scores a sampled share of live requests beside production, off
  the request path (:mod:`appliance.monitoring.shadow`), and is promoted or rejected once
  enough of its predictions have feedback. A candidate that learned nothing (the gate's
  baseline test failed) is rejected at once; with no production model to shadow, the gate
  decides.
- ``manual``: the candidate waits, its stage ``candidate``, for ``appliance promote``.

:func:`apply_policy` is the one entry: the local training path
(:class:`~appliance.models.build.ModelBuilder`) and the import of a bundle or a model file
both call it right after registering the version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.core import ApplianceError, Settings
from appliance.models.gate import Decision, numbers
from appliance.models.production import Production
from appliance.models.registry import Registry
from appliance.store import Events


class ShadowStarter(Protocol):
    """What the policy asks of shadow scoring (the monitoring package provides it)."""

    def start_shadow(self, pipeline: str, version: int) -> str:
        """Start shadowing ``version`` beside production; returns a one-line state. Raises
        ApplianceError when it can't (no production, or the two can't be compared)."""
        ...


@dataclass
class PolicyOutcome:
    policy: str
    action: str  # promoted | rejected | shadowing | waiting
    reason: str


def apply_policy(pipeline: str, version: int, *, settings: Settings, production: Production,
                 registry: Registry, events: Events, decision: Decision | None = None,
                 shadows: ShadowStarter | None = None, source: str = "trained here",
                 gate: Callable[[], Decision] | None = None) -> PolicyOutcome:
    """Apply the pipeline's promotion policy to ``version``, a registered candidate.

    ``decision``: the gate's verdict on it; for a version trained elsewhere, ``gate``
    computes it when the policy needs it (:meth:`ModelBuilder.score_version`: this box's
    newest labelled data). ``source`` says where the version comes from, for the messages
    (``trained here``, ``bundle (key ab12...)``).
    Raises what promotion raises (a version that can't be loaded is rejected first)."""
    policy = settings.pipeline(pipeline).promotion.policy
    serving = production.live.get(pipeline)
    verdict = ({**(decision.details or {}), "reason": decision.reason}
               if decision is not None else None)
    note = ""
    if policy == "manual":
        why = (f"waiting for `appliance promote {pipeline} {version}` (promotion.policy = "
               f"manual; {source})")
        if decision is not None:
            why += f". The gate: {'passed' if decision.promote else 'not passed'}: " \
                   f"{decision.reason}"
        registry.store.set_model_stage(pipeline, version, "candidate", why)
        events.emit("awaiting_promotion", f"v{version}: {why}", pipeline=pipeline,
                    version=version, **({"gate": numbers(verdict)} if verdict else {}))
        return PolicyOutcome(policy, "waiting", why)
    if policy == "shadow" and serving is not None and shadows is not None:
        baseline = ((decision.details or {}).get("tests", {}).get("baseline")
                    if decision is not None else None)
        if baseline is not None and not baseline.get("passed", True):
            why = f"not shadowed: {baseline.get('text') or decision.reason}"  # type: ignore[union-attr]
            _reject(pipeline, version, why, registry, events, verdict)
            return PolicyOutcome(policy, "rejected", why)
        try:
            state = shadows.start_shadow(pipeline, version)
        except ApplianceError as err:
            if decision is None and gate is None:
                why = f"can't be shadowed: {err.message}"
                _reject(pipeline, version, why, registry, events, verdict)
                return PolicyOutcome(policy, "rejected", why)
            # It can't be compared with production live: the gate decides, and says why.
            note = f" (not shadowed: {err.message}; the gate decided)"
        else:
            registry.store.set_model_stage(pipeline, version, "candidate", state)
            events.emit("shadow_started", f"v{version} ({source}): {state}",
                        pipeline=pipeline, version=version,
                        production_version=serving.version)
            return PolicyOutcome(policy, "shadowing", state)
    if decision is None and gate is not None:
        decision = gate()
    if decision is not None and note:
        decision = Decision(decision.promote, decision.reason + note,
                            decision.champion_metrics, decision.details)
    if decision is not None:
        verdict = {**(decision.details or {}), "reason": decision.reason}
    if decision is None:
        raise ApplianceError(
            "no_gate_verdict",
            f"v{version} of `{pipeline}` has no verdict of the gate to apply the "
            f"`{policy}` policy with; score it on this box's data first",
            {"pipeline": pipeline, "version": version}, status=409)
    if decision.promote:
        try:
            production.promote(pipeline, version, decision.reason,
                               gate=numbers(verdict) if verdict else None)
        except ApplianceError as err:
            registry.reject(pipeline, version, f"not loadable: {err.message}")
            raise
        return PolicyOutcome(policy, "promoted", decision.reason)
    _reject(pipeline, version, decision.reason, registry, events, verdict)
    return PolicyOutcome(policy, "rejected", decision.reason)


def _reject(pipeline: str, version: int, why: str, registry: Registry, events: Events,
            verdict: dict[str, Any] | None) -> None:
    registry.reject(pipeline, version, why)
    events.emit("not_promoted", f"v{version}: {why}", pipeline=pipeline, version=version,
                **({"gate": numbers(verdict)} if verdict else {}))
