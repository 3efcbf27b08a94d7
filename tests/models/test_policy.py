"""The promotion policy in process (the lab: the daemon's own Trainer and Ingester): manual
makes a candidate wait, an imported version is scored by the gate on this box's newest data
when the policy is the gate (one that learned nothing is rejected with the numbers), and
shadow with nothing to shadow falls back to the gate; nothing changes what serves unless a
version is promoted."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import polars as pl

from appliance.models import ModelImporter, PolicyParts
from tests.models.conftest import MACHINES, machines

NUMERIC = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct",
           "hours_since_service"]


def _model(shuffle: bool) -> bytes:
    data = machines("machines_02.csv")
    x = np.column_stack([data.get_column(c).cast(pl.Float64).to_numpy() for c in NUMERIC])
    y = data.get_column("failed_within_24h").to_numpy()
    if shuffle:
        y = np.random.default_rng(1).permutation(y)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7},
                        lgb.Dataset(x, y, feature_name=NUMERIC), num_boost_round=30)
    return booster.model_to_string().encode()


def _importer(lab) -> ModelImporter:
    t = lab.trainer
    return ModelImporter(PolicyParts(lab.state, lab.store, t.events, t.settings, t.production,
                                     t.builder.apply_policy), t.registry)


def test_gate_rejects_a_model_that_learned_nothing_and_manual_waits(lab):
    lab.configure({"pipelines": {"machines": MACHINES}})
    lab.ingest("machines", machines("machines_01.csv"), "m1")
    lab.train("machines")
    assert lab.live.get("machines").version == 1
    result = _importer(lab).import_bytes(_model(shuffle=True), "machines", via="test")
    assert result.version == 2 and result.stage == "rejected", result
    assert "vs production v1" in result.reason and "vs the baseline" in result.reason
    assert "this box's newest data set v1" in result.reason
    assert lab.store.model("machines", 2).stage == "rejected"
    assert lab.live.get("machines").version == 1
    lab.configure({"pipelines": {"machines": {**MACHINES, "promotion": {"policy": "manual"}}}})
    result = _importer(lab).import_bytes(_model(shuffle=False), "machines", via="test")
    assert result.version == 3 and result.stage == "candidate", result
    assert "appliance promote machines 3" in result.reason
    assert lab.store.production_model("machines").version == 1


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
