"""The promotion policy applied to an imported model (``apply_policy``), in-process with
the daemon's own parts: ``gate`` scores it beside production on this box's newest held-out
rows and rejects one that learned nothing, with the numbers; ``manual`` leaves it a
candidate; nothing changes what serves unless it is promoted."""

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
    return ModelImporter(PolicyParts(lab.state, lab.store, t.events, t.settings, t.production),
                         t.registry)


def test_gate_rejects_a_model_that_learned_nothing_and_manual_waits(lab):
    lab.configure({"pipelines": {"machines": MACHINES}})
    lab.ingest("machines", machines("machines_01.csv"), "m1")
    lab.train("machines")
    assert lab.live.get("machines").version == 1
    result = _importer(lab).import_bytes(_model(shuffle=True), "machines", via="test")
    assert result.version == 2 and result.stage == "rejected", result
    assert "vs production v1" in result.reason and "vs the baseline" in result.reason
    assert "on v1's" in result.reason and "held-out rows" in result.reason
    assert lab.store.model("machines", 2).stage == "rejected"
    assert lab.live.get("machines").version == 1
    lab.configure({"pipelines": {"machines": {**MACHINES, "promotion": {"policy": "manual"}}}})
    result = _importer(lab).import_bytes(_model(shuffle=False), "machines", via="test")
    assert result.version == 3 and result.stage == "candidate", result
    assert "appliance promote machines 3" in result.reason
    assert lab.store.production_model("machines").version == 1
    assert lab.live.get("machines").version == 1
