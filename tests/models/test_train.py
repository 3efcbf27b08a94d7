"""Training and the gate, in process, on a real state directory: real ingestion into Parquet,
real SQLite, real LightGBM and the real registry (the daemon's own Trainer, driven directly
so each case takes a fraction of a second)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from appliance.core import parse
from appliance.features import FeatureSpec, RowEncoder, build_spec, infer_task, to_matrix
from appliance.models import Source, load_training_data
from appliance.models.metrics import auc, compare
from tests.models.conftest import MACHINES, machines

# --- task inference ----------------------------------------------------------------------


@pytest.mark.parametrize(("values", "task", "words"), [
    ([0, 1] * 50, "binary", "integer with 2"),
    ([True, False] * 50, "binary", "boolean"),
    (["yes", "no"] * 50, "binary", "text with 2"),
    ([0.0, 1.0] * 50, "binary", "only 0 and 1"),
    ([0, 1, 2] * 40, "multiclass", "integer with 3 distinct small"),
    (["red", "green", "blue"] * 40, "multiclass", "text with 3"),
    ([0.5 * i for i in range(100)], "regression", "float"),
    (list(range(500)), "regression", "integer with 500"),
])
def test_task_is_inferred_from_the_target(values, task, words):
    got, reason = infer_task(pl.Series("y", values))
    assert got == task
    assert words in reason


def test_inferred_task_is_recorded_and_the_config_overrides_it(lab):
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    frame = pl.DataFrame({"x": x, "z": rng.normal(size=400),
                          "target": np.digitize(x, [-0.5, 0.5]).astype(np.int64)})
    lab.ingest("grades", frame, "grades")
    v1 = lab.train("grades")
    meta = lab.meta("grades", 1)
    assert v1.task == meta["task"] == "multiclass"
    assert "integer with 3 distinct small values" in meta["task_reason"]
    assert meta["lineage"]["task_reason"] == meta["task_reason"]

    lab.configure({"pipelines": {"grades": {"task": "regression"}}})
    v2 = lab.train("grades")
    meta = lab.meta("grades", 2)
    assert v2.task == meta["task"] == "regression" and meta["task_reason"] == "set in the config"
    assert set(v2.metrics) == {"rmse", "mae", "r2"}


# --- features ----------------------------------------------------------------------------


def test_unseen_and_null_categories_encode_the_same_in_training_and_serving():
    frame = pl.DataFrame({"site": ["a", "b", "a", None, "c", "a"], "n": [1, 2, 3, 4, 5, 6],
                          "target": [0, 1, 0, 1, 0, 1]})
    spec = build_spec(frame, parse({}).pipeline("p"), "binary")
    assert spec.features[0].categories == ["a", "b", "c"]  # most frequent first, then by value
    later = pl.DataFrame({"site": ["b", "never-seen", None], "n": [1, 1, 1]})
    x = to_matrix(later, spec)
    assert x[0, 0] == 1.0 and np.isnan(x[1, 0]) and np.isnan(x[2, 0])
    served = RowEncoder(spec).encode([{"site": "b", "n": 1}, {"site": "never-seen", "n": 1},
                                      {"site": None, "n": 1}])
    np.testing.assert_array_equal(served, x)
    # The spec goes to model.json and comes back unchanged.
    import msgspec
    assert msgspec.convert(msgspec.to_builtins(spec), FeatureSpec) == spec


# --- learnability ------------------------------------------------------------------------


def test_model_learns_the_sample_data(lab):
    """Stated bar: AUC >= 0.85 on every row of machines_02.csv, which training never saw."""
    lab.configure({"pipelines": {"machines": MACHINES}})
    lab.ingest("machines", machines("machines_01.csv"), "machines_01")
    record = lab.train("machines")
    assert record.stage == "production"
    unseen = machines("machines_02.csv")
    model = lab.live.get("machines")
    p = model.booster.predict(to_matrix(unseen, model.spec))
    assert auc(unseen["failed_within_24h"].to_numpy(), p) >= 0.85
    # The validation predictions that came from training are the model's own.
    valid = record.metrics["auc"]
    assert 0.8 < valid <= 1.0


# --- the gate ----------------------------------------------------------------------------


def test_gate_refuses_a_model_that_learned_nothing(lab):
    lab.configure({"pipelines": {"machines": MACHINES}})
    noise = machines("machines_01.csv").with_columns(
        pl.col("failed_within_24h").shuffle(seed=11))
    lab.ingest("machines", noise, "shuffled")
    record = lab.train("machines")
    assert record.stage == "rejected"
    assert "vs the baseline" in record.decision and "not better" in record.decision
    assert lab.live.get("machines") is None
    assert lab.store.production_model("machines") is None
    gate = lab.meta("machines", 1)["gate"]
    assert gate["against"] == "baseline" and gate["promoted"] is False
    kinds = [e.kind for e in lab.store.events(pipeline="machines")]
    assert "not_promoted" in kinds and "promoted" not in kinds


def test_gate_promotes_only_a_better_challenger(lab):
    lab.configure({"train": {"num_boost_round": 2, "num_leaves": 2},
                   "pipelines": {"machines": MACHINES}})
    lab.ingest("machines", machines("machines_01.csv"), "machines_01")
    v1 = lab.train("machines")
    assert v1.stage == "production"  # two stumps already beat the class prior

    lab.configure({"pipelines": {"machines": MACHINES}})
    v2 = lab.train("machines")
    assert v2.stage == "production", v2.decision
    assert v2.decision.startswith("vs production v1: auc") and ": better" in v2.decision
    assert lab.store.model("machines", 1).stage == "archived"
    assert lab.live.get("machines").version == 2

    # The same data and settings again: the same model, so no gain, so no promotion.
    v3 = lab.train("machines")
    assert v3.stage == "rejected" and "(+0.0000" in v3.decision and "not better" in v3.decision
    model_dir = lab.state.models / "machines"
    assert (model_dir / "3/model.txt").read_bytes() == (model_dir / "2/model.txt").read_bytes()

    # Older rows with shuffled labels: the challenger learns noise, is worse on the newest
    # (real) rows, and stays out of production.
    noise = machines("machines_01.csv").with_columns(
        pl.col("failed_within_24h").shuffle(seed=5),
        pl.col("timestamp") - timedelta(days=60),
        pl.col("reading_id") + "-old",
    )
    lab.ingest("machines", noise, "old_shuffled")
    v4 = lab.train("machines")
    assert v4.stage == "rejected" and "not better" in v4.decision
    assert lab.live.get("machines").version == 2

    # A per-pipeline metric and min_improvement are used and said.
    lab.configure({"pipelines": {"machines": {**MACHINES, "train": {
        "metric": "log_loss", "min_improvement": 0.5}}}})
    v5 = lab.train("machines")
    assert v5.stage == "rejected"
    assert "log_loss" in v5.decision and "needs a gain > 0.5" in v5.decision
    models = {m.version: m for m in lab.store.models("machines")}
    assert [models[v].stage for v in range(1, 6)] == [
        "archived", "production", "rejected", "rejected", "rejected"]
    assert all(models[v].decision for v in range(1, 6))
    assert sum(m.stage == "production" for m in models.values()) == 1


def test_compare_estimates_the_noise_of_the_difference():
    """The standard errors of the gate agree with a bootstrap of the same rows."""
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random(n) < 0.3).astype(np.float64)
    a = np.clip(0.3 + 0.25 * (y - 0.3) + rng.normal(0, 0.15, n), 0.01, 0.99)
    b = np.clip(0.3 + 0.15 * (y - 0.3) + rng.normal(0, 0.15, n), 0.01, 0.99)
    for metric in ("auc", "log_loss", "brier", "accuracy"):
        c = compare("binary", metric, y, a, b)
        assert c.gain > 0
        boots = []
        for _ in range(200):
            i = rng.integers(0, n, n)
            boots.append(compare("binary", metric, y[i], a[i], b[i]).gain)
        assert 0.7 < c.se / np.std(boots) < 1.4, metric
    same = compare("binary", "auc", y, a, a)
    assert same.gain == 0 and same.se == 0
    r = compare("regression", "rmse", y, a, b)
    assert r.se is not None and r.se > 0


# --- data window and lineage -------------------------------------------------------------


def test_window_of_rows_or_days_and_the_lineage_that_says_so(lab):
    m1, m2 = machines("machines_01.csv"), machines("machines_02.csv")
    lab.configure({"pipelines": {"machines": MACHINES}})
    lab.ingest("machines", m1, "machines_01")
    lab.ingest("machines", m2, "machines_02")
    full = lab.train("machines").lineage
    assert full["rows"] == 4500 and full["window"]["kind"] == "all"
    assert [(d["version"], d["rows_used"], d["file_name"]) for d in full["datasets"]] == [
        (1, 3000, "machines_01.parquet"), (2, 1500, "machines_02.parquet")]
    assert all(len(d["sha256"]) == 64 and d["ingestion_id"] for d in full["datasets"])
    assert full["split"] == "chronological" and full["train_rows"] + full["valid_rows"] == 4500
    assert full["params"]["num_threads"] >= 1 and full["params"]["learning_rate"] == 0.05
    assert {"lightgbm", "polars", "numpy", "python"} <= set(full["versions"])
    assert full["training_seconds"] > 0 and full["trained_at"]

    lab.configure({"pipelines": {"machines": {**MACHINES, "train": {"window_rows": 2000}}}})
    rows = lab.train("machines").lineage
    assert rows["rows"] == 2000 and rows["window"]["kind"] == "last 2000 rows"
    assert [(d["version"], d["rows_used"]) for d in rows["datasets"]] == [(1, 500), (2, 1500)]

    lab.configure({"pipelines": {"machines": {**MACHINES, "train": {"window_days": 10}}}})
    days = lab.train("machines").lineage
    newest = m2["timestamp"].max()
    expected = pl.concat([m1, m2]).filter(pl.col("timestamp") >= newest - timedelta(days=10))
    assert days["rows"] == expected.height and days["window"]["kind"] == "last 10 days"
    assert [d["version"] for d in days["datasets"]] == [2]
    assert days["window"]["to"] == str(newest)


def test_window_of_rows_without_timestamp_reads_only_the_newest_files(lab):
    rng = np.random.default_rng(1)
    for i in range(3):
        x = rng.normal(size=300)
        lab.ingest("plain", pl.DataFrame({"x": x, "target": (x > 0).astype(np.int64),
                                          "batch": [i] * 300}), f"b{i}")
    lab.configure({"pipelines": {"plain": {"train": {"window_rows": 400}}}})
    lineage = lab.train("plain").lineage
    assert [(d["version"], d["rows_used"]) for d in lineage["datasets"]] == [(2, 100), (3, 300)]
    assert lineage["split"] == "stratified random"


def test_a_row_sent_again_with_its_id_trains_once_as_sent_last(lab):
    # Daily exports of the last two days: each reading comes twice, and a label corrected
    # upstream comes with its fix. Rows are trained on once, as sent last.
    m = machines("machines_01.csv")
    day1, day2 = m.slice(0, 2000), m.slice(1000, 2000)
    wrong = day1.with_columns(pl.when(pl.int_range(pl.len()) >= 1000)
                              .then(1 - pl.col("failed_within_24h"))
                              .otherwise(pl.col("failed_within_24h")).alias("failed_within_24h"))
    lab.configure({"pipelines": {"machines": MACHINES}})
    lab.ingest("machines", wrong, "day1")
    lab.ingest("machines", day2, "day2")
    lineage = lab.train("machines").lineage
    assert lineage["rows"] == 3000 and lineage["window"]["replaced_rows"] == 1000
    assert lineage["window"]["kind"] == "all, the newest row per `reading_id`"
    assert [(d["version"], d["rows_used"]) for d in lineage["datasets"]] == [(1, 1000),
                                                                           (2, 2000)]
    # The frame trained on holds the corrected labels only.
    sources = [Source(d.version, lab.state.root / d.path, d.rows)
               for d in lab.store.training_datasets("machines")]
    frame = load_training_data(sources, parse({"pipelines": {"machines": MACHINES}})
                               .pipeline("machines")).frame
    assert frame.sort("reading_id").equals(m.slice(0, 3000).sort("reading_id")
                                           .select(frame.columns))

    # With a window too, the newest copy wins.
    lab.configure({"pipelines": {"machines": {**MACHINES, "train": {"window_rows": 2500}}}})
    windowed = lab.train("machines").lineage
    assert windowed["window"]["kind"] == "last 2500 rows, the newest row per `reading_id`"
    assert windowed["rows"] + windowed["window"]["replaced_rows"] == 2500


def test_an_id_that_repeats_within_a_file_replaces_nothing(lab):
    m = machines("machines_01.csv")
    lab.configure({"pipelines": {"machines": {**MACHINES, "id": "machine_id"}}})
    lab.ingest("machines", m.slice(0, 1500), "a")
    lab.ingest("machines", m.slice(1500, 1500), "b")
    lineage = lab.train("machines").lineage
    assert lineage["rows"] == 3000 and "replaced_rows" not in lineage["window"]
    assert "`machine_id` repeats within a data set" in lineage["window"]["newest_per_id"]


# --- tuning ------------------------------------------------------------------------------


def test_tuning_is_seeded_budgeted_and_recorded(lab, tmp_path):
    lab.configure({"pipelines": {"machines": MACHINES}})
    lab.ingest("machines", machines("machines_01.csv"), "machines_01")
    record = lab.train("machines", tune=3)
    tuning = lab.meta("machines", 1)["tuning"]
    assert tuning["trials_requested"] == 3 and tuning["trials_completed"] == 3
    assert len(tuning["history"]) == 3 and tuning["metric"] == "auc"
    assert tuning["chosen"] in ("tuned", "the configured parameters")
    if tuning["chosen"] == "tuned":
        assert tuning["best_value"] > tuning["default_value"]
        assert tuning["best_params"]["num_leaves"] == record.lineage["params"]["num_leaves"]
    assert record.lineage["tuning"]["trials_completed"] == 3
    assert "history" not in record.lineage["tuning"]  # the full search is in model.json only

    # Seeded: the same search again suggests and scores the same trials.
    again = lab.train("machines", tune=3)
    assert lab.meta("machines", again.version)["tuning"]["history"] == tuning["history"]

    # Budgeted: a trial still running when the time is up is stopped; the configured
    # parameters are kept.
    lab.configure({"train": {"tune_seconds": 0.001}, "pipelines": {"machines": MACHINES}})
    short = lab.train("machines", tune=50)
    tuning = lab.meta("machines", short.version)["tuning"]
    assert tuning["trials_completed"] == 0 and tuning["trials_stopped"] == 1
    assert tuning["chosen"] == "the configured parameters"

    # From the config, per pipeline.
    lab.configure({"pipelines": {"machines": {**MACHINES, "train": {"tune_trials": 2}}}})
    configured = lab.train("machines")
    assert lab.meta("machines", configured.version)["tuning"]["trials_completed"] == 2


# --- validation predictions without a second pass -----------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_validation_predictions_are_the_saved_models_own(lab, task):
    rng = np.random.default_rng(7)
    n = 1500
    x = rng.normal(size=(n, 3))
    noise = rng.normal(scale=0.7, size=n)
    target = {
        "binary": ((x[:, 0] + noise) > 0).astype(np.int64),
        "multiclass": np.array(["low", "mid", "high"])[np.digitize(x[:, 0] + noise, [-.5, .5])],
        "regression": 3 * x[:, 0] - x[:, 1] + noise,
    }[task]
    frame = pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": target})
    lab.ingest(task, frame, task)
    record = lab.train(task)
    assert record.stage == "production"
    model = lab.live.get(task)
    meta = lab.meta(task, 1)
    # Re-create the validation rows from the lineage's split and score the loaded model.
    from appliance.models.train import split_indices

    settings = lab.trainer.settings.pipeline(task)
    _, valid = split_indices(frame, settings, 0.2, 42, task)
    p = model.booster.predict(to_matrix(frame[valid], model.spec))
    from appliance.features import encode_target
    from appliance.models.metrics import evaluate

    again = evaluate(task, encode_target(frame[valid]["target"], model.spec), p)
    for name, value in meta["metrics"].items():
        assert again[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_training_threads_default_to_all_cores_but_one(lab):
    import os

    from appliance.models import training_threads

    cores = len(os.sched_getaffinity(0))
    assert training_threads(0) == max(1, cores - 1)
    assert training_threads(3) == 3
    lab.configure({"train": {"threads": 1}})
    rng = np.random.default_rng(2)
    x = rng.normal(size=200)
    lab.ingest("t", pl.DataFrame({"x": x, "target": (x > 0).astype(np.int64)}), "t")
    assert lab.train("t").lineage["params"]["num_threads"] == 1


# --- column names LightGBM, Polars or the date parts would trip on ------------------------


HOSTILE = {  # header -> what the column holds
    "Temperature [C]": "float", 'pressure "bar"': "float", "rpm, max": "float",
    "{vib}: mm/s": "float", "count": "text", "t": "date", "t.month": "int",
}


def hostile_frame(n: int, seed: int) -> pl.DataFrame:
    from datetime import date

    rng = np.random.default_rng(seed)
    temp = rng.normal(60, 10, n)
    kind = rng.choice(["pump", "fan", "press"], n)
    failed = ((temp - 60) / 10 + (kind == "press") + rng.normal(0, 0.7, n) > 1).astype(np.int64)
    return pl.DataFrame({
        "Temperature [C]": temp, 'pressure "bar"': rng.normal(3, 1, n),
        "rpm, max": rng.normal(1500, 100, n), "{vib}: mm/s": rng.normal(2, 0.5, n),
        "count": kind,
        "t": [date(2025, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 365, n)],
        "t.month": rng.integers(1, 13, n), "target": failed,
    })


def test_hostile_column_names_train_serve_and_profile_by_their_raw_names(lab):
    """Headers an ingestion accepts: LightGBM refuses `[]{}":,` in feature names, Polars'
    value_counts a column named `count`, and `t`'s month part is named like `t.month`."""
    frame = hostile_frame(1200, 5)
    lab.ingest("plant", frame, "plant")
    record = lab.train("plant")
    assert record.stage == "production", record.decision
    meta = lab.meta("plant", 1)
    model = lab.live.get("plant")
    # model.json keeps the raw names; LightGBM got names of its own, one per input column.
    assert [f["name"] for f in meta["spec"]["features"]] == list(HOSTILE)
    columns = model.spec.columns
    assert len(set(columns)) == len(columns) == model.booster.num_feature()
    assert "t.month" in columns and "t.month (date part)" in columns
    assert set(meta["feature_importance"]) == set(columns)
    names = meta["lightgbm_feature_names"]
    assert names == model.booster.feature_name() and len(names) == len(columns)
    assert not any(ch in name for name in names for ch in '[]{}":, ')
    # Serving encodes by the raw names, exactly as training did.
    rows = frame.head(50).drop("target").with_columns(pl.col("t").cast(pl.String)).to_dicts()
    np.testing.assert_array_equal(model.encoder.encode(rows), to_matrix(frame.head(50),
                                                                        model.spec))
    assert model.predict_rows(rows[:1])[0] == pytest.approx(model.predict_rows(rows)[0],
                                                            abs=1e-12)
    # The drift reference is by raw name too, `count` among the categorical ones.
    ref = meta["reference"]["features"]
    assert set(ref) == set(HOSTILE) - {"t"}
    assert ref["count"]["kind"] == "categorical" and set(ref["count"]["fractions"]) == {
        "pump", "fan", "press"}


def test_a_model_lightgbm_knows_by_the_raw_names_still_loads_and_serves(lab):
    """Models registered before LightGBM got names of its own (model.txt naming features
    by their raw names, no ``lightgbm_feature_names`` in model.json) load and answer as
    before: serving never goes by LightGBM's names."""
    import dataclasses
    import re

    import lightgbm as lgb

    from appliance.core import PipelineSettings, TrainSettings
    from appliance.models.train import train

    frame = machines("machines_01.csv")
    settings = PipelineSettings(**MACHINES)
    candidate = train(frame, settings, TrainSettings(num_boost_round=30))
    raw = " ".join(candidate.spec.columns)
    old_text = re.sub(r"(?m)^feature_names=.*$", f"feature_names={raw}", candidate.model_text)
    assert old_text != candidate.model_text
    old = dataclasses.replace(candidate, model_text=old_text,
                              booster=lgb.Booster(model_str=old_text))
    registry = lab.trainer.registry
    for c in (candidate, old):
        registry.register("machines", c, {"trigger": "test"})
    new_model, old_model = registry.load("machines", 1), registry.load("machines", 2)
    assert old_model.booster.feature_name() == candidate.spec.columns
    rows = frame.head(20).drop("failed_within_24h").with_columns(
        pl.col("timestamp").cast(pl.String)).to_dicts()
    assert old_model.predict_rows(rows) == new_model.predict_rows(rows)
    assert old_model.predict_rows(rows[:1]) == new_model.predict_rows(rows[:1])
