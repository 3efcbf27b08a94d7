"""The feature store's core: derived features, point-in-time joins, the online store."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from appliance.core import ApplianceError, ConfigError, parse
from appliance.features.featurestore import (
    DerivedFeatures,
    OnlineStore,
    fill_rows,
    join_feature_set,
    online_entries,
)
from appliance.store import Store

T0 = datetime(2026, 1, 1)


def test_as_of_join_never_takes_a_value_from_the_future():
    rng = np.random.default_rng(7)
    n_keys, n_rows = 50, 5000
    # Each key's feature value changes every day; the value equals the day it took effect.
    history = pl.DataFrame({
        "machine_id": [f"M{k}" for k in range(n_keys) for _ in range(30)],
        "updated_at": [T0 + timedelta(days=d) for _ in range(n_keys) for d in range(30)],
        "firmware_day": [float(d) for _ in range(n_keys) for d in range(30)],
    })
    rows = pl.DataFrame({
        "machine_id": [f"M{k}" for k in rng.integers(0, n_keys, n_rows)],
        "ts": [T0 + timedelta(hours=float(h)) for h in rng.uniform(0, 24 * 31, n_rows)],
        "y": rng.integers(0, 2, n_rows),
    })
    joined = join_feature_set(rows, history, key="machine_id", row_time="ts",
                              feature_time="updated_at", name="machines")
    assert joined.height == n_rows
    assert "updated_at" not in joined.columns
    day_of_row = ((joined["ts"] - T0).dt.total_seconds() / 86400).floor()
    # The value a row sees took effect on or before the row's day: never later.
    assert (joined["firmware_day"] <= day_of_row).all()
    # And it is the newest such value, not an old one.
    assert (joined["firmware_day"] == day_of_row.clip(upper_bound=29)).all()


def test_join_before_first_value_is_missing_and_without_times_takes_latest():
    rows = pl.DataFrame({"k": ["a", "b"], "ts": [T0, T0 + timedelta(days=5)], "y": [0, 1]})
    fs = pl.DataFrame({"k": ["a", "a", "b"],
                       "at": [T0 + timedelta(days=1), T0 + timedelta(days=9), T0],
                       "v": [1.0, 9.0, 2.0]})
    asof = join_feature_set(rows, fs, key="k", row_time="ts", feature_time="at", name="f")
    assert dict(zip(asof["k"], asof["v"], strict=True)) == {"a": None, "b": 2.0}
    latest = join_feature_set(rows, fs, key="k", row_time=None, feature_time="at", name="f")
    assert latest["v"].to_list() == [9.0, 2.0]


def test_join_errors_name_the_problem():
    rows = pl.DataFrame({"k": ["a"], "v": [1]})
    with pytest.raises(ApplianceError, match="rename one side"):
        join_feature_set(rows, pl.DataFrame({"k": ["a"], "v": [2]}), key="k", row_time=None,
                         feature_time=None, name="f")
    with pytest.raises(ApplianceError, match="no column `id`"):
        join_feature_set(rows, pl.DataFrame({"id": ["a"]}), key="id", row_time=None,
                         feature_time=None, name="f")


def test_derived_features_compute_and_check_their_columns():
    derived = DerivedFeatures({"temp_f": "temperature * 1.8 + 32",
                               "load_ratio": "current / rated_current",
                               "hot": "CASE WHEN temp_f > 150 THEN 1 ELSE 0 END"})
    assert derived.inputs() == {"temperature", "current", "rated_current"}
    frame = pl.DataFrame({"temperature": [20.0, 70.0, None], "current": [5, 8, 1],
                          "rated_current": [10, 10, 4]})
    out = derived.apply(frame)
    assert out["temp_f"].to_list() == [68.0, 158.0, None]
    assert out["load_ratio"].to_list() == [0.5, 0.8, 0.25]
    assert out["hot"].to_list() == [0, 1, 0]  # SQL: NULL > 150 is not true
    derived.check_columns(frame.columns)
    with pytest.raises(ApplianceError, match="`load_ratio` names unknown column"):
        derived.check_columns(["temperature", "current"])


def test_bad_expressions_and_joins_stop_the_config_load():
    with pytest.raises(ConfigError) as info:
        parse({"pipelines": {"p": {"derived": {"temp_f": "temperature * * 2"}}}})
    assert info.value.key == "pipelines.p.derived.temp_f" and "temp_f" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse({"pipelines": {"p": {"join": ["machines"]}}})
    assert info.value.key == "pipelines.p.join"
    with pytest.raises(ConfigError) as info:
        parse({"feature_sets": {"machines": {"timestamp": "t"}}})
    assert info.value.key == "feature_sets.machines.key"
    ok = parse({"feature_sets": {"machines": {"key": "machine_id"}},
                "pipelines": {"p": {"join": ["machines"], "derived": {"x2": "x * 2"}}}})
    assert ok.feature_sets["machines"].key == "machine_id"


def test_online_store_fill_policies():
    store = OnlineStore()
    store.load("machines", {"M1": {"rated_current": 10.0, "model": "X"}})
    rows = [{"machine_id": "M1", "current": 5.0},
            {"machine_id": "M1", "current": 5.0, "model": "Y"},
            {"machine_id": "M9", "current": 1.0}]
    fill_rows(rows, "machines", "machine_id", ["rated_current", "model"], store, "null")
    assert rows[0] == {"machine_id": "M1", "current": 5.0, "rated_current": 10.0,
                       "model": "X"}
    assert rows[1]["model"] == "Y"  # what the request sends wins
    assert rows[2]["rated_current"] is None and rows[2]["model"] is None
    with pytest.raises(ApplianceError) as info:
        fill_rows([{"machine_id": "M9"}], "machines", "machine_id", ["model"], store, "error")
    assert info.value.status == 422 and "M9" in info.value.message
    assert info.value.details["field"] == "machine_id"


def test_sqlite_online_store_keeps_the_newest_values(tmp_path):
    db = Store.open(tmp_path / "a.db")
    newer = pl.DataFrame({"k": ["a", "a", "b"], "t": ["2026-01-02", "2026-01-05", "2026-01-01"],
                          "v": [1, 5, 7]})
    db.upsert_online_features("fs", online_entries(newer, "k", "t"), 1, "t")
    assert db.online_features("fs") == {"a": {"t": "2026-01-05", "v": 5},
                                        "b": {"t": "2026-01-01", "v": 7}}
    late = pl.DataFrame({"k": ["a", "b"], "t": ["2026-01-03", "2026-01-09"], "v": [3, 9]})
    db.upsert_online_features("fs", online_entries(late, "k", "t"), 2, "t")
    stored = db.online_features("fs")
    assert stored["a"]["v"] == 5  # an older value arriving late doesn't roll a key back
    assert stored["b"]["v"] == 9
    assert db.online_feature("fs", "b")["dataset_version"] == 2
    assert db.online_summary("fs")["keys"] == 2


@pytest.mark.parametrize("fast", [True, False], ids=["python", "polars"])
def test_a_request_row_gets_the_derived_values_training_computed(fast, monkeypatch):
    """Polars computes a column divided by a constant as a true division in a frame of one
    row but by the reciprocal in a longer frame (and x + 0 keeps or drops a -0.0 sign by
    the same rule): a lone request row must still get training's bits, by either path."""
    from appliance.features import featurestore

    expressions = {"ratio": "load / 2.5", "scaled": "load * 0.3 / 7", "shifted": "load + 0",
                   "mixed": "CASE WHEN load > 3 THEN load / 1.1 ELSE -load END"}
    inputs = {"load": "Float64"}
    if not fast:
        monkeypatch.setattr(featurestore, "_row_program", lambda *_: None)
    values = [7.0, 0.1, 3.3, -0.0, 1e-300, 123456.789, 2.5, None]
    trained = featurestore.DerivedFeatures(expressions).apply(
        pl.DataFrame({"load": values}, schema={"load": pl.Float64}))
    for i, value in enumerate(values):
        row = {"load": value}
        featurestore.derive_rows([row], expressions, inputs)
        for name in expressions:
            want = trained[name][i]
            assert row[name] == want or (row[name] != row[name] and want != want), (name, value)
            if isinstance(want, float):
                assert math.copysign(1, row[name]) == math.copysign(1, want), (name, value)
    assert featurestore.DerivedFeatures({"r": "load / 2.5"}).apply(
        pl.DataFrame({"load": [7.0]}))["r"][0] != trained["ratio"][0]  # the rule it guards
