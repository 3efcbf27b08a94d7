"""Explanations of predictions: LightGBM's exact TreeSHAP contributions (``pred_contrib``),
in raw-score units, grouped and named as the caller knows the features.

For each row (and each class of a multiclass model) LightGBM gives one contribution per
input column of the model and the base value (the model's expected raw score), and
``base + sum(contributions)`` is the raw score. The model's input columns are not always
the caller's: a date column is expanded into parts (month, day, weekday, hour), so the
parts' contributions are summed into the date column, which is what the caller sent.
Features the caller did not send are named for what they are: ``derived`` (a config
expression) or ``joined`` (filled from a feature set's online store, which is named).

One row goes through LightGBM's single-row fast C API, like predictions; a batch through
``Booster.predict`` on the whole matrix, with one LightGBM thread. The explainer of a model
is built at its first explained request (one more FastConfig), never for a model nobody
asks to explain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.api_types import Explanation, FeatureContribution
from appliance.models.predictor import (
    PREDICT_CONTRIB,
    PREDICT_THREADS,
    FastSingleRow,
)

if TYPE_CHECKING:
    from appliance.models.predictor import LoadedModel


class Explainer:
    """The explanations of one loaded model."""

    def __init__(self, model: LoadedModel) -> None:
        spec = model.spec
        booster = model.booster
        self.booster = booster
        self.width = width = model.encoder.width
        self.nclass = booster.num_model_per_iteration() if spec.task == "multiclass" else 1
        self.labels: list[str | None] = (
            [str(c) for c in spec.classes or []] if spec.task == "multiclass" else [None])
        starts, at = [], 0
        for f in spec.features:
            starts.append(at)
            at += len(f.columns())
        self.starts = np.array(starts, dtype=np.intp)
        self.grouped = at != len(starts)  # some feature has several columns (a date)
        self.names = [f.name for f in spec.features]
        joined = {c: j["feature_set"] for j in spec.joins for c in j.get("columns", [])}
        derived = set(spec.derived)
        self.sources: list[tuple[str, str | None]] = [
            ("derived", None) if name in derived
            else ("joined", joined[name]) if name in joined
            else ("input", None)
            for name in self.names
        ]
        self.fast_contrib = FastSingleRow(booster, width, (width + 1) * self.nclass,
                                          PREDICT_CONTRIB)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """LightGBM's contributions ``(n, nclass, width + 1)`` (the base value last) of an
        encoded matrix."""
        n, nclass, width = len(x), self.nclass, self.width
        if n == 1:
            out = self.fast_contrib.predict(x[0].tolist())
        else:
            out = self.booster.predict(x, pred_contrib=True, num_threads=PREDICT_THREADS)
        return np.asarray(out).reshape(n, nclass, width + 1)

    def explain(self, x: np.ndarray, rows: list[Any], k: int) -> list[list[Explanation]]:
        """Per row of ``x`` (encoded from ``rows``), one explanation per class (one for
        binary and regression): the base value, the ``k`` largest contributions by
        magnitude (ties in feature order), and the sum of the others."""
        contrib = self.contributions(x)
        # TreeSHAP is exact: the base value and the contributions add up to LightGBM's raw
        # score (tests/models/test_explain.py checks it against Booster.predict(raw_score)
        # to 1e-9), so the raw score is their sum rather than a second pass over the trees.
        raw = contrib.sum(axis=2)
        base = contrib[:, :, -1]
        per_feature = contrib[:, :, :-1]
        if self.grouped:  # a date's parts, summed into the date
            per_feature = np.add.reduceat(per_feature, self.starts, axis=2)
        nfeat = per_feature.shape[2]
        k = min(k, nfeat)
        order = np.argsort(-np.abs(per_feature), axis=2, kind="stable")[:, :, :k]
        top = np.take_along_axis(per_feature, order, axis=2)
        if k < nfeat:
            others = (per_feature.sum(axis=2) - top.sum(axis=2)).tolist()
        else:
            others = np.zeros(base.shape).tolist()
        names, sources = self.names, self.sources
        out: list[list[Explanation]] = []
        for row, raw_i, base_i, order_i, top_i, others_i in zip(
                rows, raw.tolist(), base.tolist(), order.tolist(), top.tolist(), others,
                strict=True):
            get = row.get if isinstance(row, dict) else None
            per_class = []
            for c, label in enumerate(self.labels):
                contributions = []
                for j, value in zip(order_i[c], top_i[c], strict=True):
                    source, feature_set = sources[j]
                    contributions.append(FeatureContribution(
                        feature=names[j], contribution=value,
                        value=get(names[j]) if get is not None else None,
                        source=source, feature_set=feature_set))
                per_class.append(Explanation(
                    raw_score=raw_i[c], base_value=base_i[c], contributions=contributions,
                    others=others_i[c], class_=label))
            out.append(per_class)
        return out
