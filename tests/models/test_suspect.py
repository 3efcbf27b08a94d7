"""The suspect-labels check: never a flag on noise, at any size from 20 rows to a million,
for binary, multiclass and regression models, strong or barely better than the baseline;
and wrong labels (inverted, shuffled, permuted classes, a shifted target) flagged once the
batch holds the evidence. The models here are the data's true laws (a perfect model) or
a real LightGBM model, so the validation numbers are honest."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from appliance.core import parse
from appliance.models import LoadedModel, check_frame, label_profile, train
from appliance.models import metrics as m
from appliance.models.suspect import judge

Z, TOLERANCE = 3.0, 0.5
SIZES = [20, 30, 100, 1000, 10_000, 100_000]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class Law:
    """A data set's true law: features, what a model predicts, and labels drawn from it."""

    def __init__(self, task: str, strength: float) -> None:
        self.task, self.strength = task, strength

    def features(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(size=(n, 3))

    def predict(self, x: np.ndarray) -> np.ndarray:
        s = self.strength
        if self.task == "binary":
            return sigmoid(-1.8 + s * (1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2]))
        if self.task == "multiclass":
            logits = s * np.stack([x[:, 0], x[:, 1] - x[:, 0], 0.5 * x[:, 2]], axis=1)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return s * (2 * x[:, 0] - x[:, 1]) + 10.0

    def labels(self, rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
        if self.task == "binary":
            return (rng.uniform(size=len(p)) < p).astype(np.float64)
        if self.task == "multiclass":
            u = rng.uniform(size=(len(p), 1))
            return (u > np.cumsum(p, axis=1)).sum(axis=1).astype(np.float64)
        return p + rng.normal(size=len(p))

    def draw(self, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        p = self.predict(self.features(rng, n))
        return self.labels(rng, p), p

    def meta(self) -> dict:
        """model.json of a model whose validation was 2,000 rows of this law."""
        y_train, _ = self.draw(10_000, 8_000)
        y, p = self.draw(10_001, 2_000)
        k = 3 if self.task == "multiclass" else 0
        prior = m.baseline_predictions(self.task, y_train, 1, k)[0]
        base = m.baseline_predictions(self.task, y_train, len(y), k)
        candidate = SimpleNamespace(spec=SimpleNamespace(task=self.task), y_valid=y, p_valid=p,
                                    metric=m.PRIMARY[self.task][0], y_train_prior=prior,
                                    valid_rows=len(y))
        return {"metrics": m.evaluate(self.task, y, p),
                "baseline_metrics": m.evaluate(self.task, y, base),
                "valid_rows": len(y), "label_check": label_profile(candidate)}


def seeds_for(n: int) -> range:
    return range(150 if n <= 1000 else 8 if n <= 10_000 else 2)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("strength", [1.0, 0.08], ids=["strong", "barely-better"])
def test_true_labels_are_never_flagged_at_any_size(task, strength):
    law = Law(task, strength)
    meta = law.meta()
    flagged, judged = [], 0
    for n in SIZES:
        for seed in seeds_for(n):
            y, p = law.draw(seed, n)
            verdict = judge(meta, task, y, p, tolerance=TOLERANCE, z=Z)
            judged += verdict.checked
            if verdict.suspect:
                flagged.append((n, seed, verdict.reason))
    # One-sided tests at 3 standard errors: about 1 in 700 batches each, when the model is
    # barely better than the baseline; a model with a real edge is never near the line.
    assert len(flagged) <= (2 if strength < 1 else 0), flagged[:3]
    assert judged == sum(len(seeds_for(n)) for n in SIZES)


def wrong(task: str, kind: str, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "shuffled":
        return rng.permutation(y)
    if task == "binary":
        return 1 - y  # inverted
    if task == "multiclass":
        return (y + 1) % 3  # every class renamed to the next
    return -y + 20.0  # the sign of the target flipped (around its mean)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("kind", ["inverted", "shuffled"])
def test_wrong_labels_are_flagged_once_the_batch_holds_the_evidence(task, kind):
    law = Law(task, 1.0)
    meta = law.meta()
    # Inverted labels show in 30 rows; shuffled ones (the model merely useless) in a few
    # hundred.
    sizes = [30, 100, 1000, 100_000] if kind == "inverted" else [300, 1000, 100_000]
    for n in sizes:
        caught = 0
        seeds = range(40 if n <= 1000 else 2)
        for seed in seeds:
            y, p = law.draw(seed, n)
            bad = wrong(task, kind, y, np.random.default_rng(seed + 1))
            verdict = judge(meta, task, bad, p, tolerance=TOLERANCE, z=Z)
            caught += verdict.suspect
        assert caught >= 0.9 * len(seeds), (n, caught)


def test_a_batch_too_small_or_of_one_class_is_judged_by_what_it_has():
    law = Law("binary", 1.0)
    meta = law.meta()
    y, p = law.draw(1, 19)
    verdict = judge(meta, "binary", y, p, tolerance=TOLERANCE, z=Z)
    assert verdict.checked  # judge itself takes any size; check_frame asks for 20 rows
    y, p = law.draw(2, 500)
    ones = np.ones_like(y)  # every row labelled 1: no AUC, log loss decides
    verdict = judge(meta, "binary", ones, p, tolerance=TOLERANCE, z=Z)
    assert verdict.metric == "log_loss" and verdict.suspect
    assert "log_loss" in verdict.reason and "worse than the baseline" in verdict.reason


def test_a_million_rows_with_a_real_lightgbm_model():
    """The whole path of the daemon: a LightGBM model, its model.json as the registry
    writes it, a batch of a million rows (judged on a seeded sample of 20,000)."""
    settings = parse({"pipelines": {"p": {"target": "y"}}})
    rng = np.random.default_rng(7)

    def frame(n: int) -> pl.DataFrame:
        x = rng.normal(size=(n, 4))
        kind = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
        logit = -1.5 + 1.2 * x[:, 0] - 0.8 * x[:, 1] + 0.6 * (kind == "b")
        y = (rng.uniform(size=n) < sigmoid(logit)).astype(np.int64)
        return pl.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "x3": x[:, 3],
                             "kind": kind, "y": y})

    candidate = train(frame(5_000), settings.pipeline("p"), settings.train)
    meta = {"metrics": candidate.metrics, "baseline_metrics": candidate.baseline,
            "valid_rows": candidate.valid_rows, "label_check": label_profile(candidate)}
    model = LoadedModel(pipeline="p", version=1, booster=candidate.booster,
                        spec=candidate.spec, meta=meta)
    batch = frame(1_000_000)
    good = check_frame(model, batch, tolerance=TOLERANCE, z=Z)
    assert good.checked and not good.suspect, good.reason
    assert good.rows == 20_000 and good.metric == "auc"
    bad = check_frame(model, batch.with_columns((1 - pl.col("y")).alias("y")),
                      tolerance=TOLERANCE, z=Z)
    assert bad.suspect and bad.details["below_baseline"] and bad.details["degraded"]
    tiny = check_frame(model, batch.head(19), tolerance=TOLERANCE, z=Z)
    assert not tiny.checked and "at least 20" in tiny.reason


@pytest.mark.parametrize("kind", ["bool", "text", "int"])
def test_targets_of_every_type_are_judged_as_the_model_was_loaded(kind):
    """Booleans, text and integers as labels, through model.json's JSON as the registry
    loads it; a class the model never saw is left out and counted."""
    import json

    import msgspec

    from appliance.features import FeatureSpec

    rng = np.random.default_rng(3)
    x = rng.normal(size=3000)
    positive = rng.uniform(size=3000) < sigmoid(2 * x)

    def labels(flags: np.ndarray) -> np.ndarray:
        return {"bool": flags, "text": np.where(flags, "yes", "no"),
                "int": flags.astype(np.int64)}[kind]

    frame = pl.DataFrame({"x": x, "y": labels(positive)})
    settings = parse({"pipelines": {"p": {"target": "y"}}})
    candidate = train(frame, settings.pipeline("p"), settings.train)
    meta = json.loads(json.dumps({
        "metrics": candidate.metrics, "baseline_metrics": candidate.baseline,
        "valid_rows": candidate.valid_rows, "label_check": label_profile(candidate),
        "spec": msgspec.to_builtins(candidate.spec)}))
    model = LoadedModel(pipeline="p", version=1, booster=candidate.booster,
                        spec=msgspec.convert(meta["spec"], FeatureSpec), meta=meta)
    batch = frame.head(500)
    good = check_frame(model, batch, tolerance=TOLERANCE, z=Z)
    assert good.checked and not good.suspect and good.rows == 500, good.reason
    bad = batch.with_columns(pl.Series("y", labels(~positive[:500])))
    assert check_frame(model, bad, tolerance=TOLERANCE, z=Z).suspect
    if kind == "text":
        odd = pl.concat([batch, pl.DataFrame({"x": [0.1, 0.2], "y": ["maybe", "maybe"]})])
        verdict = check_frame(model, odd, tolerance=TOLERANCE, z=Z)
        assert verdict.rows == 500 and verdict.details["rows_of_unknown_classes"] == 2


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_model_made_before_the_profile_is_judged_from_the_batch(task):
    """model.json of an older version has no label_check: the baseline is the model's mean
    prediction of the batch and the validation's standard error is the batch's, scaled."""
    law = Law(task, 1.0)
    meta = law.meta()
    del meta["label_check"]
    held = caught = 0
    for seed in range(60):
        y, p = law.draw(seed, 300)
        held += judge(meta, task, y, p, tolerance=TOLERANCE, z=Z).suspect
        bad = wrong(task, "inverted", y, np.random.default_rng(seed))
        verdict = judge(meta, task, bad, p, tolerance=TOLERANCE, z=Z)
        caught += verdict.suspect
        assert verdict.details["baseline_source"] == "the model's mean prediction of the batch"
    assert held == 0 and caught == 60
