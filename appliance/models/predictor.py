"""A loaded model: its booster, its feature encoding, and how its outputs are shaped.

``LiveModels`` holds the production model of each pipeline. A swap is one reference
assignment, so a request that already took a model finishes on it while the next request
sees the new one.

Two prediction paths, both LightGBM's own code and tested to give the same numbers:

- one row: LightGBM's single-row fast C API (``LGBM_BoosterPredictForMatSingleRowFast``),
  called through ctypes with its arguments prepared once per model. ``Booster.predict``
  costs tens of microseconds of Python per call; this costs about one.
- a batch: ``Booster.predict`` on the whole matrix, with one LightGBM thread, so that
  prediction never fights the server's event loop or a training job for the cores.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, LightGBMError

from appliance.core import ApplianceError
from appliance.features import FeatureSpec, RowDerivation, RowEncoder

log = logging.getLogger("appliance.models")

# LightGBM's C API constants (c_api.h).
_PREDICT_NORMAL = 0
PREDICT_CONTRIB = 3
_DTYPE_FLOAT64 = 1

# LightGBM threads for batch predictions: serving shares a small box with training.
PREDICT_THREADS = 1


def _lgbm_error() -> LightGBMError:
    return LightGBMError(_LIB.LGBM_GetLastError().decode("utf-8", "replace"))


# Our own function objects (``_LIB[name]`` makes a new one), so setting their argtypes
# can't change how the lightgbm package itself calls the library.
_fast_init = _LIB["LGBM_BoosterPredictForMatSingleRowFastInit"]
_fast_init.restype = ctypes.c_int
_fast_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int32, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
_fast_predict = _LIB["LGBM_BoosterPredictForMatSingleRowFast"]
_fast_predict.restype = ctypes.c_int
_fast_free = _LIB["LGBM_FastConfigFree"]
_fast_free.restype = ctypes.c_int
_fast_free.argtypes = [ctypes.c_void_p]

# How many FastConfig handles are alive (for tests: a swapped-out model frees its own).
_live_fast_configs = 0
_count_lock = threading.Lock()


def live_fast_configs() -> int:
    return _live_fast_configs


def _free_fast_config(handle: int) -> None:
    global _live_fast_configs
    _fast_free(handle)
    with _count_lock:
        _live_fast_configs -= 1


class FastSingleRow:
    """LightGBM's single-row fast path for one booster (its predictions; or, with
    ``predict_type``, its TreeSHAP contributions, for explanations).

    The FastConfig, the input row and the output buffer are made once; a call fills the
    row and makes one C call. A lock keeps two threads from sharing the buffers (the event
    loop is the only caller in practice, so it is never contended). The FastConfig is
    freed when this object is collected, which is after the last request that took the
    model has finished; it keeps the booster alive until then.
    """

    def __init__(self, booster: lgb.Booster, ncol: int, nout: int,
                 predict_type: int = _PREDICT_NORMAL) -> None:
        global _live_fast_configs
        self._booster = booster  # the FastConfig points into it
        handle = ctypes.c_void_p()
        if _fast_init(booster._handle, predict_type, 0, -1, _DTYPE_FLOAT64, ncol,
                      b"num_threads=1", ctypes.byref(handle)) != 0:
            raise _lgbm_error()
        with _count_lock:
            _live_fast_configs += 1
        self._handle = handle
        self._finalizer = weakref.finalize(self, _free_fast_config, handle.value)
        self._finalizer.atexit = False
        self.ncol = ncol
        self.nout = nout
        self._row = (ctypes.c_double * ncol)()
        self._out = (ctypes.c_double * nout)()
        self._len = ctypes.c_int64()
        self._len_ref = ctypes.byref(self._len)
        self._lock = threading.Lock()

    def predict(self, values: list[float]) -> list[float]:
        """Raw outputs for one encoded row (``ncol`` floats, NaN for missing)."""
        with self._lock:
            self._row[:] = values
            if _fast_predict(self._handle, self._row, self._len_ref, self._out) != 0:
                raise _lgbm_error()
            return self._out[:]

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


@dataclass
class LoadedModel:
    pipeline: str
    version: int
    booster: lgb.Booster
    spec: FeatureSpec
    meta: dict[str, Any]
    encoder: RowEncoder = field(init=False)
    fast: FastSingleRow = field(init=False, repr=False)
    # The derived features for request rows, compiled and checked against Polars here,
    # while the model loads off the event loop; None without derived features.
    derivation: RowDerivation | None = field(init=False, repr=False)
    # Explanations (explain.py), built at the first request that asks for one.
    _explainer: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.encoder = RowEncoder(self.spec)
        width = self.encoder.width
        if self.booster.num_feature() != width:
            raise ApplianceError(
                "model_mismatch",
                f"v{self.version} of `{self.pipeline}`: the booster takes "
                f"{self.booster.num_feature()} inputs but model.json describes {width}",
                {"pipeline": self.pipeline, "version": self.version}, status=409,
            )
        multiclass = self.spec.task == "multiclass"
        self._classes = list(self.spec.classes or []) if multiclass else []
        self._labels = [str(c) for c in self._classes]
        nout = self.booster.num_model_per_iteration() if multiclass else 1
        self.fast = FastSingleRow(self.booster, width, nout)
        self.derivation = (RowDerivation(self.spec.derived, self.spec.derived_inputs)
                           if self.spec.derived else None)

    def warm(self) -> None:
        """Run both paths once, so the first request pays no set-up."""
        row = [np.nan] * self.encoder.width
        self.fast.predict(row)
        self.predict_matrix(np.full((2, self.encoder.width), np.nan))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs: P(positive) for binary, class probabilities for multiclass, values
        for regression. One LightGBM thread: serving shares the box with training."""
        return self.booster.predict(x, num_threads=PREDICT_THREADS)

    def _shape_one(self, raw: list[float]) -> Any:
        if not self._classes:
            return raw[0]
        best = max(range(len(raw)), key=raw.__getitem__)  # the first maximum, as np.argmax
        return {"class": self._classes[best],
                "probabilities": dict(zip(self._labels, raw, strict=True))}

    def shape_outputs(self, raw: np.ndarray) -> list[Any]:
        if self.spec.task == "multiclass":
            return [self._shape_one(probs) for probs in raw.tolist()]
        return raw.tolist()

    def predict_one(self, row: Any) -> Any:
        """One request row through the fast path."""
        values: list[float] = []
        self.encoder.append_row(row, 0, values)
        return self._shape_one(self.fast.predict(values))

    def predict_rows(self, rows: list[Any]) -> list[Any]:
        """Request rows to answers: one row on the fast path, a batch vectorized."""
        if len(rows) == 1:
            return [self.predict_one(rows[0])]
        return self.shape_outputs(self.predict_matrix(self.encoder.encode(rows)))

    def explainer(self) -> Any:
        """This model's :class:`~appliance.models.explain.Explainer` (made once)."""
        explainer = self._explainer
        if explainer is None:
            from appliance.models.explain import Explainer  # it builds on this module

            explainer = self._explainer = Explainer(self)
        return explainer

    def predict_explained(self, rows: list[Any], k: int) -> tuple[list[Any], list[Any]]:
        """Request rows to answers and their explanations (``k`` contributions each): the
        answers are :meth:`predict_rows`' own, the rows encoded once for both."""
        x = self.encoder.encode(rows)
        if len(rows) == 1:
            predictions = [self._shape_one(self.fast.predict(x[0].tolist()))]
        else:
            predictions = self.shape_outputs(self.predict_matrix(x))
        return predictions, self.explainer().explain(x, rows, k)


class LiveModels:
    """The models being served, by pipeline."""

    def __init__(self, max_string_chars: int | None = None) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        # The longest unseen category a request may send (server.max_string_chars), given
        # to each model as it is swapped in; None: the encoder's default.
        self.max_string_chars = max_string_chars
        self._listeners: list[Callable[[LoadedModel, LoadedModel | None], None]] = []

    def get(self, pipeline: str) -> LoadedModel | None:
        return self._models.get(pipeline)

    def on_swap(self, listener: Callable[[LoadedModel, LoadedModel | None], None]) -> None:
        """Call ``listener(new, old)`` after each swap (on the swapping thread; what it
        raises is logged, never passed on to the swap)."""
        self._listeners.append(listener)

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        if self.max_string_chars is not None:
            model.encoder.max_string_chars = self.max_string_chars
        with self._lock:
            old = self._models.get(model.pipeline)
            self._models = {**self._models, model.pipeline: model}
        for listener in list(self._listeners):
            try:
                listener(model, old)
            except Exception:
                log.exception("swap_listener_failed pipeline=%s", model.pipeline)
        return old

    def remove(self, pipeline: str) -> LoadedModel | None:
        """Stop serving a pipeline (it is being deleted); returns what served."""
        with self._lock:
            old = self._models.get(pipeline)
            self._models = {k: m for k, m in self._models.items() if k != pipeline}
            return old

    def versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self._models.items()}
