"""The promotion policy in process (the lab: the daemon's own Trainer and Ingester): manual
makes a candidate wait, an imported version is scored by the gate on this box's newest data
when the policy is the gate, and shadow with nothing to shadow falls back to the gate."""

from __future__ import annotations

from tests.models.conftest import MACHINES, machines


def policy(lab, name: str) -> None:
    lab.configure({"pipelines": {"machines": {**MACHINES, "promotion": {"policy": name}}}})


def test_manual_waits_and_an_imported_version_meets_the_gate_on_this_boxs_data(lab):
    policy(lab, "shadow")  # nothing in production to shadow: the gate decides v1
    lab.ingest("machines", machines("machines_01.csv"), "machines_01")
    v1 = lab.train("machines")
    assert v1.stage == "production", v1.decision

    policy(lab, "manual")
    v2 = lab.train("machines")
    assert v2.stage == "candidate"
    assert v2.decision.startswith("waiting for `appliance promote machines 2`")
    assert "The gate:" in v2.decision  # its verdict is kept for the operator
    assert lab.live.get("machines").version == 1
    kinds = [e.kind for e in lab.store.events(limit=10)]
    assert "awaiting_promotion" in kinds

    # As an import would: the policy (now the gate) scores v2 on this box's newest data.
    policy(lab, "gate")
    outcome = lab.trainer.builder.apply_policy("machines", 2, source="bundle (key test)")
    assert outcome.action == "rejected", outcome.reason  # the same data: not better
    assert "rows of this box's newest data set v1" in outcome.reason
    record = lab.store.model("machines", 2)
    assert record.stage == "rejected" and record.decision == outcome.reason
    assert lab.live.get("machines").version == 1
