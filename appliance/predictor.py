"""A loaded model: its booster, its feature encoding, and how its outputs are shaped.

``LiveModels`` holds the production model of each pipeline. A swap is one reference
assignment, so a request that already took a model finishes on it while the next request
sees the new one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

from appliance.features import FeatureSpec, RowEncoder


@dataclass
class LoadedModel:
    pipeline: str
    version: int
    booster: lgb.Booster
    spec: FeatureSpec
    meta: dict[str, Any]
    encoder: RowEncoder = field(init=False)

    def __post_init__(self) -> None:
        self.encoder = RowEncoder(self.spec)

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs: P(positive) for binary, class probabilities for multiclass, values
        for regression. One LightGBM thread: serving shares the box with training."""
        return self.booster.predict(x, num_threads=1)

    def shape_outputs(self, raw: np.ndarray) -> list[Any]:
        if self.spec.task == "multiclass":
            classes = self.spec.classes or []
            labels = [str(c) for c in classes]
            out = []
            for probs in raw:
                best = int(np.argmax(probs))
                out.append({
                    "class": classes[best],
                    "probabilities": {labels[i]: float(p) for i, p in enumerate(probs)},
                })
            return out
        return [float(v) for v in raw]

    def predict_rows(self, rows: list[Any]) -> list[Any]:
        return self.shape_outputs(self.predict_matrix(self.encoder.encode(rows)))


class LiveModels:
    """The models being served, by pipeline."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, pipeline: str) -> LoadedModel | None:
        return self._models.get(pipeline)

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old = self._models.get(model.pipeline)
            self._models = {**self._models, model.pipeline: model}
            return old

    def versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self._models.items()}
