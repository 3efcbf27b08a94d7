"""Drift statistics, as pure functions: known values, shifts found on the right feature,
no false alarms on samples of the same distribution, categorical and prediction drift."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from appliance.core import DriftSettings
from appliance.features import Feature, FeatureSpec, profile
from appliance.monitoring import drift

SETTINGS = DriftSettings()
NUMERIC = [f"x{i}" for i in range(6)]
CATEGORICAL = ["colour", "machine"]


def frame(n: int, seed: int, scale: dict[str, float] | None = None,
          colour_p: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)) -> pl.DataFrame:
    """Six numeric features of different shapes, an integer, a boolean, a 4-level and a
    120-level categorical."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {
        "x0": rng.normal(0, 1, n), "x1": rng.normal(50, 8, n), "x2": rng.gamma(2.0, 3.0, n),
        "x3": rng.lognormal(0.2, 0.4, n), "x4": rng.uniform(20, 80, n),
        "x5": rng.exponential(5.0, n),
        "count": rng.integers(0, 6, n), "flag": rng.uniform(size=n) < 0.3,
        "colour": rng.choice(["red", "green", "blue", "grey"], n, p=list(colour_p)),
        "machine": [f"M-{k:03d}" for k in rng.integers(0, 120, n)],
    }
    for name, factor in (scale or {}).items():
        data[name] = np.asarray(data[name]) * factor
    df = pl.DataFrame(data)
    # A few missing values, as real sensors send.
    return df.with_columns(pl.when(pl.col("x4") > 79.5).then(None).otherwise(pl.col("x4"))
                           .alias("x4"))


SPEC = FeatureSpec(task="regression", target="y", classes=None, features=[
    *(Feature(name=n, kind="numeric", dtype="Float64") for n in [*NUMERIC, "count"]),
    Feature(name="flag", kind="boolean", dtype="Boolean"),
    *(Feature(name=n, kind="categorical", dtype="String") for n in CATEGORICAL),
    Feature(name="when", kind="datetime", dtype="Datetime"),
])


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = profile.reference_stats(frame(3000, seed=1), SPEC,
                                  np.random.default_rng(1).beta(2, 5, 600))
    # It is stored in model.json: it must survive JSON.
    return json.loads(json.dumps(ref))


def evaluate(reference: dict, current: pl.DataFrame, predictions=None) -> drift.DriftReport:
    return drift.evaluate(reference, current, SETTINGS, pipeline="p", model_version=1,
                          source="ingestion", predictions=predictions)


def test_scores_have_their_known_values():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    # Hand-computed: (0.7 - 0.5) ln(0.7/0.5) + (0.3 - 0.5) ln(0.3/0.5)
    assert drift.psi([0.5, 0.5], [0.7, 0.3]) == pytest.approx(
        0.2 * math.log(1.4) - 0.2 * math.log(0.6))
    assert drift.js([1, 0], [0, 1]) == pytest.approx(math.sqrt(math.log(2)))
    assert drift.js([0.2, 0.8], [0.2, 0.8]) == 0.0
    assert drift.ks([0.1, 0.5, 1.0], [0.3, 0.6, 1.0]) == pytest.approx(0.2)


def test_reference_covers_features_and_leaves_dates_out(reference):
    feats = reference["features"]
    assert set(feats) == {*NUMERIC, "count", "flag", *CATEGORICAL}
    x4 = feats["x4"]
    assert x4["kind"] == "numeric" and 0 < x4["null_fraction"] < 0.02
    assert len(x4["bin_edges"]) == 9 and sum(x4["bin_fractions"]) == pytest.approx(1)
    assert len(x4["quantiles"]) == len(x4["cdf"]) <= 101 and x4["cdf"][-1] == 1.0
    assert set(feats["colour"]["fractions"]) == {"red", "green", "blue", "grey"}
    assert feats["flag"]["bin_fractions"][0] == pytest.approx(0.7, abs=0.03)
    assert reference["prediction"]["kind"] == "numeric"


@pytest.mark.parametrize("feature", NUMERIC)
def test_a_feature_scaled_x3_is_flagged_and_no_other(reference, feature):
    for seed in (11, 12, 13):
        report = evaluate(reference, frame(1500, seed, scale={feature: 3.0}))
        flagged = [f.feature for f in report.features if f.drifted]
        assert flagged == [feature], (seed, [(f.feature, f.psi, f.ks, f.js)
                                             for f in report.features])
        shifted = next(f for f in report.features if f.feature == feature)
        assert shifted.psi > SETTINGS.psi_threshold and shifted.ks > SETTINGS.ks_threshold
        assert report.drifted_share == pytest.approx(1 / 10)
        # One feature of ten, with no importance given: the headline drifts only when
        # that feature moved severely (a PSI above drift.severe_psi).
        assert shifted.severe == (shifted.psi > SETTINGS.severe_psi)
        assert report.drifted == shifted.severe and report.severe == (
            [feature] if shifted.severe else [])


def test_unshifted_batches_flag_nothing_across_seeds(reference):
    worst: dict[str, float] = {}
    for seed in range(20, 32):
        for n in (500, 2000, 20_000):
            report = evaluate(reference, frame(n, seed),
                              np.random.default_rng(seed).beta(2, 5, n))
            assert not report.drifted and report.drifted_share == 0.0, (seed, n)
            assert not report.prediction.drifted
            for f in report.features:
                assert not f.drifted, (seed, n, f)
                worst[f.feature] = max(worst.get(f.feature, 0.0), f.psi)
    # Far from the threshold, not just under it (the 120-level feature included).
    assert max(worst.values()) < SETTINGS.psi_threshold / 2, worst


def test_categorical_drift_new_mix_and_new_category(reference):
    report = evaluate(reference, frame(1500, 40, colour_p=(0.1, 0.2, 0.3, 0.4)))
    flagged = {f.feature: f for f in report.features if f.drifted}
    assert set(flagged) == {"colour"}
    assert flagged["colour"].kind == "categorical"
    assert flagged["colour"].psi > 0.2 and flagged["colour"].js > 0.1

    # A category never seen in training takes a third of the rows.
    df = frame(1500, 41)
    colour = df["colour"].to_list()
    colour[::3] = ["purple"] * len(colour[::3])
    report = evaluate(reference, df.with_columns(pl.Series("colour", colour)))
    assert [f.feature for f in report.features if f.drifted] == ["colour"]


def test_half_the_features_drifting_is_data_set_drift(reference):
    scale = {name: 3.0 for name in NUMERIC[:5]}
    report = evaluate(reference, frame(1500, 50, scale=scale))
    assert report.drifted_share == pytest.approx(0.5) and report.drifted
    assert drift.alarm(report)


@pytest.mark.parametrize("n", [30, 150, 1000, 5000])
def test_a_sensor_that_goes_silent_drifts(reference, n):
    df = frame(n, 60).with_columns(pl.lit(None, dtype=pl.Float64).alias("x1"))
    report = evaluate(reference, df)
    assert [f.feature for f in report.features if f.drifted] == ["x1"]
    # A column gone empty is severe: the pipeline drifts on that feature alone.
    assert report.severe == ["x1"] and report.drifted and drift.alarm(report)
    x1 = next(f for f in report.features if f.feature == "x1")
    assert x1.null_share == 1.0 and "x1 (severe: every value missing)" in report.summary
    if n <= SETTINGS.test_max_rows:
        assert report.method == "tests" and x1.test == "missing" and x1.p_value < 1e-6


def test_prediction_drift_numeric_and_multiclass(reference):
    rng = np.random.default_rng(70)
    same = evaluate(reference, frame(1000, 70), rng.beta(2, 5, 1000))
    assert not same.prediction.drifted and not drift.alarm(same)
    moved = evaluate(reference, frame(1000, 70), rng.beta(5, 2, 1000))
    assert moved.prediction.drifted and moved.prediction.kind == "prediction"
    assert not moved.drifted and drift.alarm(moved)

    spec = FeatureSpec(task="multiclass", target="y", classes=["a", "b", "c"],
                       features=SPEC.features)
    train_raw = rng.dirichlet([5, 3, 2], 900)
    ref = profile.reference_stats(frame(3000, 1), spec, train_raw)
    assert ref["prediction"]["kind"] == "categorical"
    same_pred = profile.prediction_values("multiclass", rng.dirichlet([5, 3, 2], 1000),
                                        spec.classes)
    other_pred = profile.prediction_values("multiclass", rng.dirichlet([2, 3, 5], 1000),
                                         spec.classes)
    assert not evaluate(ref, frame(1000, 71), same_pred).prediction.drifted
    assert evaluate(ref, frame(1000, 71), other_pred).prediction.drifted


def test_small_samples_use_fewer_bins(reference):
    for n, n_ref in ((100, 2400), (1000, 2400), (3000, 3000), (10_000, 10_000), (10**6, 10**5)):
        bins = drift.max_bins(n, n_ref)
        # Pure sampling noise adds about (bins - 1) * (1/n + 1/N) to PSI: kept in budget.
        assert bins == 2 or (bins - 1) * (1 / n + 1 / n_ref) <= drift.NOISE_BUDGET
    assert drift.max_bins(3000, 3000) >= 10  # deciles all kept with a few thousand rows
    assert drift.max_bins(100, 2400) == 2
    # A tiny batch is still scored, with coarse bins, and a big shift still shows.
    tiny = evaluate(reference, frame(60, 80, scale={"x1": 3.0}))
    assert [f.feature for f in tiny.features if f.drifted] == ["x1"]


def test_ties_that_differ_in_the_last_bits_do_not_drift():
    # A shallow model gives many rows the same probability, up to the order of a sum.
    rng = np.random.default_rng(3)
    levels = np.array([0.014687959846322325, 0.014837547382466858, 0.0156, 0.09, 0.3])
    ref = levels[rng.integers(0, 5, 4000)]
    cur = levels[rng.integers(0, 5, 4000)] * (1 + rng.choice([-1, 0, 1], 4000) * 2e-16)
    score, ks_score, _ = drift.compare_numeric(profile.numeric_stats(ref), cur)
    assert score < 0.05 and ks_score < 0.05


@pytest.mark.parametrize("name", ["count", "proportion", "Temperature [C]"])
def test_a_text_column_with_any_name_profiles_and_compares(name):
    """Polars' value_counts names its count column `count`: a text column of that name
    must profile and compare like any other."""
    rng = np.random.default_rng(4)
    ref_values = pl.Series(name, rng.choice(["a", "b", "c"], 2000, p=[0.6, 0.3, 0.1]))
    ref = profile.categorical_stats(ref_values)
    assert ref["fractions"] == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1}, abs=0.03)
    same = pl.Series(name, rng.choice(["a", "b", "c"], 1000, p=[0.6, 0.3, 0.1]))
    moved = pl.Series(name, rng.choice(["a", "b", "c"], 1000, p=[0.1, 0.3, 0.6]))
    assert not drift.compare(name, ref, same, SETTINGS).drifted
    assert drift.compare(name, ref, moved, SETTINGS).drifted


@pytest.mark.parametrize("n", [10_000, 60_000])
def test_a_large_batch_is_never_judged_less_sensitively_than_a_tested_one(reference, n):
    """SD x 1.4 moves PSI to about 0.15, under the effect-size threshold; the tests see it
    at 1,000 rows, so they see it in a seeded 1,000-row sample of a larger batch too."""
    for seed in (81, 82):
        report = evaluate(reference, frame(n, seed, scale={"x0": 1.4}),
                          np.random.default_rng(seed).beta(2, 5, n))
        assert report.method == "effect_sizes" and report.rows == n
        flagged = {f.feature: f for f in report.features if f.drifted}
        assert list(flagged) == ["x0"], [(f.feature, f.psi, f.p_value) for f in
                                         report.features]
        x0 = flagged["x0"]
        assert x0.psi < SETTINGS.psi_threshold and x0.ks < SETTINGS.ks_threshold
        assert x0.p_value <= SETTINGS.alpha and x0.test is not None
        assert not report.prediction.drifted


def test_a_large_multiclass_batch_tests_its_predicted_classes_on_the_sample(reference):
    rng = np.random.default_rng(83)
    spec = FeatureSpec(task="multiclass", target="y", classes=["a", "b", "c"],
                       features=SPEC.features)
    ref = profile.reference_stats(frame(3000, 1), spec, rng.dirichlet([5, 3, 2], 900))
    n = 12_000
    same = profile.prediction_values("multiclass", rng.dirichlet([5, 3, 2], n), spec.classes)
    other = profile.prediction_values("multiclass", rng.dirichlet([3, 3, 3], n), spec.classes)
    assert not evaluate(ref, frame(n, 84), same).prediction.drifted
    moved = evaluate(ref, frame(n, 84), other)
    assert moved.method == "effect_sizes" and moved.prediction.drifted
