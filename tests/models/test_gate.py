"""The gate's statistics, fast: the one-sided test and its false-promotion rate, the loss
test on the champion's rows, and, through the daemon's own training run on small data
(real LightGBM, real registry), the champion's-rows check, the data window that retires
it, and the held-out rows each version keeps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from appliance.models.holdout import HOLDOUT_FILE, match_rows
from appliance.models.metrics import (
    Comparison,
    compare,
    passes,
    rows_to_show,
    significant_loss,
)

# --- the one-sided test ------------------------------------------------------------------


@pytest.mark.parametrize(("gain", "se", "margin", "z", "better"), [
    (0.030, 0.010, 0.0, 2.0, True),    # 3 SE
    (0.015, 0.010, 0.0, 2.0, False),   # 1.5 SE: noise-level, not promoted
    (0.030, 0.010, 0.01, 2.0, False),  # beyond the margin by exactly 2 SE: not more
    (0.031, 0.010, 0.01, 2.0, True),
    (0.000, 0.000, 0.0, 2.0, False),   # the same model
    (0.050, None, 0.0, 2.0, False),    # no standard error: not shown to be better
    (0.001, 0.010, 0.0, 0.0, True),    # z = 0: the margin alone decides
    (0.000, 0.010, 0.0, 0.0, False),
])
def test_one_sided_test_needs_the_margin_and_the_standard_errors(gain, se, margin, z, better):
    c = Comparison(metric="auc", challenger=0.8 + gain, reference=0.8, gain=gain, se=se)
    ok, why = passes(c, margin, z)
    assert ok is better, why
    assert ("not better" in why or "not shown" in why) is not better
    assert f"needs a gain > {margin:g}" in why
    if z and se:
        assert f"by {z:g} SE" in why and f"{gain / se:.1f} SE" in why


def test_rows_to_show_a_gain_scale_with_its_standard_errors():
    c = Comparison(metric="auc", challenger=0.815, reference=0.8, gain=0.015, se=0.010)
    assert rows_to_show(c, 0.0, 2.0, 400) == 712      # 400 * (2 * 0.010 / 0.015) ** 2
    assert rows_to_show(c, 0.005, 2.0, 400) == 1600   # beyond a margin: (0.02 / 0.01) ** 2
    at = Comparison("auc", 0.815, 0.8, 0.015, 0.010 * (400 / 712) ** 0.5)
    assert passes(at, 0.0, 2.0)[0] or abs(at.gain / at.se - 2.0) < 1e-3
    assert rows_to_show(Comparison("auc", 0.83, 0.8, 0.03, 0.01), 0.0, 2.0, 400) is None
    assert rows_to_show(Comparison("auc", 0.79, 0.8, -0.01, 0.01), 0.0, 2.0, 400) is None
    assert rows_to_show(Comparison("auc", 0.85, 0.8, 0.05, None), 0.0, 2.0, 400) is None


def test_a_real_gain_on_too_few_rows_is_told_how_many_would_show_it():
    """A model with a real signal, judged on 30 held-out rows, is not shown to beat the
    baseline; the rows it asks for are about right: scored on that many new rows, such a
    model passes about half the time or more (the gain's estimate is itself noisy)."""
    rng = np.random.default_rng(5)

    def scored(n: int) -> Comparison:
        s = rng.normal(size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-0.8 * s))).astype(np.float64)
        return compare("binary", "auc", y, 1 / (1 + np.exp(-s)), np.full(n, y.mean()))

    asked = []
    for _ in range(200):
        c = scored(30)
        if not passes(c, 0.0, 2.0)[0] and (k := rows_to_show(c, 0.0, 2.0, 30)):
            asked.append(k)
    assert len(asked) > 20
    median = int(np.median(asked))
    assert 30 < median < 2000
    passed = sum(passes(scored(median), 0.0, 2.0)[0] for _ in range(100))
    assert passed >= 40, (median, passed)


def _equally_good(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Two predictors of the same quality (the same signal, independent noise)."""
    s = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-1.5 * s))).astype(np.float64)
    a = 1 / (1 + np.exp(-(s + rng.normal(0, 1, n))))
    b = 1 / (1 + np.exp(-(s + rng.normal(0, 1, n))))
    return y, a, b


@pytest.mark.parametrize(("metric", "runs"), [("auc", 300), ("log_loss", 1000),
                                              ("brier", 1000)])
def test_noise_level_gains_pass_at_the_one_sided_rate(metric, runs):
    """Equally good challengers: the rule before (any gain) promotes about half of them;
    the one-sided test at 2 SE about 2.3% (the normal tail), whatever the metric."""
    rng = np.random.default_rng(14)
    at_2 = at_0 = 0
    for _ in range(runs):
        c = compare("binary", metric, *_equally_good(rng, 400))
        at_2 += passes(c, 0.0, 2.0)[0]
        at_0 += passes(c, 0.0, 0.0)[0]
    assert 0.35 < at_0 / runs < 0.65
    assert at_2 / runs < 0.055, at_2 / runs


def test_a_real_gain_passes_and_regression_and_f1_have_standard_errors():
    rng = np.random.default_rng(3)
    s = rng.normal(size=3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-2 * s))).astype(np.float64)
    good = 1 / (1 + np.exp(-2 * s))
    weak = 1 / (1 + np.exp(-(s + rng.normal(0, 1.5, 3000))))
    for metric in ("auc", "log_loss", "brier", "accuracy", "f1"):
        c = compare("binary", metric, y, good, weak)
        assert c.se is not None and c.se > 0, metric
        assert passes(c, 0.0, 2.0)[0], (metric, c)
    r = rng.normal(size=2000)
    target = 3 * r + rng.normal(0, 1, 2000)
    for metric in ("rmse", "mae", "r2"):
        c = compare("regression", metric, target, 3 * r, 2 * r)
        assert c.se and passes(c, 0.0, 2.0)[0], metric
    k = rng.integers(0, 3, 1500)
    probs = np.full((1500, 3), 0.1)
    probs[np.arange(1500), k] = 0.8
    prior = np.full((1500, 3), 1 / 3)
    c = compare("multiclass", "macro_f1", k.astype(np.float64), probs, prior)
    assert c.se is not None and passes(c, 0.0, 2.0)[0]


@pytest.mark.parametrize(("gain", "se", "z", "worse"), [
    (-0.030, 0.010, 2.0, True),
    (-0.015, 0.010, 2.0, False),  # a loss within noise does not block
    (0.020, 0.010, 2.0, False),
    (-0.001, 0.010, 0.0, True),   # z = 0: any loss blocks
    (-0.030, None, 2.0, False),   # no standard error: not checked
])
def test_a_significant_loss_is_one_sided_too(gain, se, z, worse):
    c = Comparison(metric="rmse", challenger=1.0, reference=1.0 - gain, gain=gain, se=se)
    got, why = significant_loss(c, z)
    assert got is worse, why


# --- the held-out rows matched to a data window ----------------------------------------------


def test_kept_rows_are_matched_to_the_data_by_the_pipelines_own_columns():
    frame = pl.DataFrame({"a": [1, 2, 3, 4], "b": ["x", "y", "z", "w"],
                          "joined": [0.1, 0.2, 0.3, 0.4]})
    rows = pl.DataFrame({"a": [3, 9], "b": ["z", "q"], "joined": [99.0, 0.2]},
                        schema_overrides={"a": pl.Int32})
    in_frame, held = match_rows(frame, rows, {"a": "Int64", "b": "String"})
    # Row 3 matches on the pipeline's columns although the joined value changed since.
    assert in_frame.tolist() == [False, False, True, False] and held.tolist() == [True, False]
    assert match_rows(frame, rows.drop("a", "b"), {"a": "Int64", "b": "String"}) is None


# --- through the training run -----------------------------------------------------------------

T0 = datetime(2026, 1, 1)


def readings(n: int, seed: int, start: datetime, sign: float = 1.0) -> pl.DataFrame:
    """A regression over 30 days: y = sign * 3 x0 + x1 + noise (a sign of -1: the world
    changed the other way)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    minutes = np.sort(rng.integers(0, 60 * 24 * 30, n))
    return pl.DataFrame({
        "ts": [start + timedelta(minutes=int(m)) for m in minutes],
        "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2],
        "y": sign * 3 * x[:, 0] + x[:, 1] + rng.normal(0, 0.5, n)})


def test_forgetting_what_the_champion_knew_blocks_unless_the_window_retires_it(lab):
    lab.configure({"pipelines": {"p": {"target": "y", "timestamp": "ts"}}})
    lab.ingest("p", readings(1000, 1, T0), "old")
    v1 = lab.train("p")
    assert v1.stage == "production"
    kept = lab.meta("p", 1)["holdout"]
    assert kept["rows"] == v1.lineage["valid_rows"] == 200
    # The world changed: the new batch, three times larger, says the opposite of x0.
    lab.ingest("p", readings(3000, 2, T0 + timedelta(days=30), sign=-1.0), "new")
    v2 = lab.train("p")
    tests = v2.lineage["gate"]["tests"]
    assert tests["champion"]["passed"] and tests["baseline"]["passed"], v2.decision
    past = tests["champion_rows"]
    assert past["status"] == "checked" and past["rows"] == 200 and not past["passed"]
    assert past["z"] < -2 and v2.stage == "rejected"
    assert "On v1's 200 held-out rows: rmse" in v2.decision and "worse" in v2.decision
    assert "[pipelines.p.train] window_days" in v2.decision  # what to do if that is right
    # v1's held-out rows were left out of v2's training, so both were scored out of sample.
    assert v2.lineage["left_out_rows"] == 200
    assert v2.lineage["train_rows"] == 4000 - 800 - 200
    assert lab.live.get("p").version == 1

    # The operator says data older than 25 days is obsolete: v1's rows (its newest, days
    # 24 to 30) are partly outside the window; those inside are still checked.
    lab.configure({"pipelines": {"p": {"target": "y", "timestamp": "ts",
                                       "train": {"window_days": 35}}}})
    v3 = lab.train("p")
    past = v3.lineage["gate"]["tests"]["champion_rows"]
    assert 0 < past["rows"] < 200 and past["rows_kept"] == 200
    assert past["window"] == "last 35 days"
    assert f"On {past['rows']} of v1's 200 held-out rows still in the data window" in v3.decision

    # All of them outside: obsolete, not checked; the challenger is judged on the new rows.
    lab.configure({"pipelines": {"p": {"target": "y", "timestamp": "ts",
                                       "train": {"window_days": 20}}}})
    v4 = lab.train("p")
    past = v4.lineage["gate"]["tests"]["champion_rows"]
    assert past["status"] == "obsolete" and past["passed"] and past["rows"] == 0
    assert "v1's held-out rows are all outside this version's data window (last 20 days), " \
           "obsolete: not checked" in v4.decision
    assert v4.stage == "production", v4.decision
    assert v4.lineage["left_out_rows"] == 0


def test_the_window_by_arrival_retires_old_rows_without_a_timestamp(lab):
    rng = np.random.default_rng(5)

    def batch(n: int, sign: float) -> pl.DataFrame:
        x = rng.normal(size=(n, 2))
        return pl.DataFrame({"x0": x[:, 0], "x1": x[:, 1],
                             "target": sign * 2 * x[:, 0] + rng.normal(0, 0.5, n)})

    lab.ingest("plain", batch(800, 1.0), "old")
    assert lab.train("plain").stage == "production"
    lab.ingest("plain", batch(1500, -1.0), "new")
    lab.configure({"pipelines": {"plain": {"train": {"window_rows": 1500}}}})
    v2 = lab.train("plain")
    past = v2.lineage["gate"]["tests"]["champion_rows"]
    assert past["status"] == "obsolete" and past["window"] == "last 1500 rows"
    assert v2.stage == "production", v2.decision


def test_each_version_keeps_its_held_out_rows_bounded_and_hashed(lab):
    lab.configure({"train": {"holdout_max_rows": 50},
                   "pipelines": {"p": {"target": "y", "timestamp": "ts"}}})
    lab.ingest("p", readings(1000, 1, T0), "old")
    v1 = lab.train("p")
    folder = lab.state.models / "p" / "1"
    kept = pl.read_parquet(folder / HOLDOUT_FILE)
    meta = lab.meta("p", 1)["holdout"]
    assert kept.height == meta["rows"] == 50 and meta["valid_rows"] == 200
    assert meta["first"] >= str(T0 + timedelta(days=23)) and meta["baseline_prior"] is not None
    import hashlib
    assert hashlib.sha256((folder / HOLDOUT_FILE).read_bytes()).hexdigest() == meta["sha256"]
    assert v1.stage == "production"

    # A damaged file is not trusted: the check says so and the gate still rules.
    (folder / HOLDOUT_FILE).write_bytes(b"PAR1 damaged")
    lab.ingest("p", readings(1000, 3, T0 + timedelta(days=30)), "more")
    v2 = lab.train("p")
    past = v2.lineage["gate"]["tests"]["champion_rows"]
    assert past["status"] == "unreadable" and past["passed"]
    assert "does not match the hash in its model.json" in v2.decision
    assert v2.stage in ("production", "rejected") and v2.decision


def test_a_multiclass_batch_with_its_classes_swapped_is_not_promoted(lab):
    rng = np.random.default_rng(8)
    names = np.array(["low", "mid", "high"])

    def batch(n: int) -> pl.DataFrame:
        x = rng.normal(size=(n, 3))
        k = np.digitize(x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.4, n), [-0.6, 0.6])
        return pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                             "site": np.array(["n", "s", "e"])[rng.integers(0, 3, n)],
                             "grade": names[k]})

    lab.configure({"pipelines": {"grades": {"target": "grade"}}})
    lab.ingest("grades", batch(1500), "first")
    assert lab.train("grades").stage == "production"
    swapped = batch(1500).with_columns(pl.col("grade").replace_strict(
        {"low": "mid", "mid": "high", "high": "low"}))
    lab.ingest("grades", swapped, "swapped")
    v2 = lab.train("grades")
    assert v2.stage == "rejected", v2.decision
    tests = v2.lineage["gate"]["tests"]
    assert not (tests["baseline"]["passed"] and tests["champion_rows"]["passed"])
    assert tests["champion_rows"]["metric"] == "log_loss"
    events = [e for e in lab.store.events(pipeline="grades") if e.kind == "not_promoted"]
    assert events and json.dumps(events[0].details["gate"]["tests"])
