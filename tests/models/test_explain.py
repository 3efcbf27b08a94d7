"""Explanations, in process: LightGBM's TreeSHAP contributions add up to the raw score
LightGBM computes on its own, a date's parts are summed into the date, the top k are the
largest, joined and derived features are named as such, and explaining changes no answer."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from appliance.features import to_matrix
from appliance.models.predictor import LoadedModel
from tests.models.test_predictor import _loaded, _request_rows


def _total(e) -> float:
    return e.base_value + math.fsum(c.contribution for c in e.contributions) + e.others


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_base_plus_all_contributions_is_the_raw_score(task):
    model, df = _loaded(task)
    n = 40
    rows = _request_rows(df)[:n]
    # LightGBM's own raw scores and contributions, from the training encoding of the frame.
    x = to_matrix(df.head(n), model.spec)
    raw = model.booster.predict(x, raw_score=True).reshape(n, -1)
    nclass = raw.shape[1]
    contrib = model.booster.predict(x, pred_contrib=True).reshape(n, nclass, -1)
    columns = model.spec.columns
    when_parts = [j for j, c in enumerate(columns) if c.startswith("when.")]
    assert len(when_parts) == 4  # month, day, weekday, hour

    for batch in (rows, rows[:1]):  # a batch, and one row through the fast C API
        predictions, explanations = model.predict_explained(
            [dict(r) for r in batch], k=100)
        assert predictions == model.predict_rows([dict(r) for r in batch])
        assert len(explanations) == len(batch)
        for i, per_class in enumerate(explanations):
            assert len(per_class) == nclass
            for c, e in enumerate(per_class):
                assert e.raw_score == pytest.approx(raw[i, c], abs=1e-12)
                assert e.others == 0.0
                # All of them, named as the caller sent them: the date once, not its parts.
                names = [f.feature for f in e.contributions]
                assert sorted(names) == sorted(["x1", "x2", "color", "flag", "when"])
                assert abs(e.base_value + math.fsum(f.contribution for f in e.contributions)
                           - raw[i, c]) <= 1e-9
                assert e.base_value == pytest.approx(contrib[i, c, -1], abs=1e-12)
                when = next(f for f in e.contributions if f.feature == "when")
                assert when.contribution == pytest.approx(
                    contrib[i, c, when_parts].sum(), abs=1e-12)
                assert when.value == batch[i]["when"]
                assert all(f.source == "input" and f.feature_set is None
                           for f in e.contributions)
                assert e.class_ == (str(model.spec.classes[c]) if task == "multiclass"
                                    else None)
    if task == "binary":  # the raw score is the log-odds of the probability answered
        p = predictions[0]
        assert 1 / (1 + math.exp(-explanations[0][0].raw_score)) == pytest.approx(p, rel=1e-12)


def test_top_k_are_the_largest_and_the_rest_is_summed():
    model, df = _loaded("regression")
    rows = _request_rows(df)[:30]
    _, full = model.predict_explained([dict(r) for r in rows], k=100)
    for batch in (rows, rows[:1]):
        _, top = model.predict_explained([dict(r) for r in batch], k=2)
        for i, (t,) in enumerate(top):
            (f,) = full[i]
            assert len(t.contributions) == 2
            magnitudes = sorted((abs(c.contribution) for c in f.contributions), reverse=True)
            assert [abs(c.contribution) for c in t.contributions] == magnitudes[:2]
            assert abs(_total(t) - f.raw_score) <= 1e-9
            assert t.others == pytest.approx(
                sum(c.contribution for c in f.contributions[2:]), abs=1e-12)


def test_joined_and_derived_features_are_named_as_such():
    model, df = _loaded("binary")
    spec = msgspec.structs.replace(
        model.spec,
        joins=[{"feature_set": "machines_info", "key": "site", "columns": ["x2"]}],
        derived={"x1": "x2 * 2"}, derived_inputs={"x2": "Int64"})
    named = LoadedModel(pipeline="p", version=2, booster=model.booster, spec=spec, meta={})
    rows = _request_rows(df)[:3]
    _, explanations = named.predict_explained(rows, k=5)
    by_name = {c.feature: c for c in explanations[0][0].contributions}
    assert (by_name["x2"].source, by_name["x2"].feature_set) == ("joined", "machines_info")
    assert (by_name["x1"].source, by_name["x1"].feature_set) == ("derived", None)
    assert by_name["color"].source == "input"
    # On the wire: `class` only for multiclass, no empty feature_set.
    wire = msgspec.json.decode(msgspec.json.encode(explanations[0][0]))
    assert "class" not in wire
    assert wire["contributions"][0].keys() == {"feature", "contribution", "value", "source",
                                               "feature_set"}
    assert np.isfinite(wire["raw_score"])
