"""Column roles and the one encoding of features shared by training and serving.

A :class:`FeatureSpec` is decided from the training data and stored with the model
(``model.json``), so that a served version encodes rows exactly as it was trained:

- numeric and boolean columns are used as they are (booleans as 0/1);
- string columns are LightGBM categorical features: each category seen in training gets a
  code (most frequent first, at most ``MAX_CATEGORIES``); a category never seen in training
  is treated as missing, never as an error;
- date and datetime columns other than the pipeline's timestamp are expanded into parts
  (month, day of month, day of week, and hour for datetimes). The year is left out on
  purpose: a tree can't extrapolate it to the years it will serve in.

The target, the ``id`` column and the ``timestamp`` column are never features.

Column names are the operator's, whatever they are (``Temperature [C]``, ``count``, a
column ``t.month`` beside a date ``t``): the model's input columns have unique names
(:attr:`FeatureSpec.columns`; a date part yields to a column of the same name), and
LightGBM, which refuses some characters in feature names, gets names of its own
(:func:`booster_feature_names`), positional, so the raw names never reach it.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Any, Literal

import msgspec
import numpy as np
import polars as pl

from appliance.core import ApplianceError, PipelineSettings, preview

MAX_CATEGORIES = 1000
MULTICLASS_MAX_CLASSES = 50

Kind = Literal["numeric", "boolean", "categorical", "datetime", "date"]

DATETIME_PARTS = ("month", "day", "weekday", "hour")
DATE_PARTS = ("month", "day", "weekday")


class Feature(msgspec.Struct, kw_only=True):
    name: str
    kind: Kind
    dtype: str
    categories: list[str] | None = None

    def columns(self) -> list[str]:
        """Names of the model's input columns that this feature becomes."""
        if self.kind == "datetime":
            return [f"{self.name}.{p}" for p in DATETIME_PARTS]
        if self.kind == "date":
            return [f"{self.name}.{p}" for p in DATE_PARTS]
        return [self.name]


class FeatureSpec(msgspec.Struct, kw_only=True):
    task: Literal["binary", "multiclass", "regression"]
    target: str
    classes: list[Any] | None
    features: list[Feature]
    # The feature store's part (see featurestore.py), kept with the model so that serving
    # computes exactly what training did: feature sets joined by key (filled from the online
    # store at prediction time), derived features as Polars SQL, and the types of the raw
    # columns those expressions read.
    joins: list[dict[str, Any]] = msgspec.field(default_factory=list)
    derived: dict[str, str] = msgspec.field(default_factory=dict)
    derived_inputs: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """The names of the model's input columns, in order, unique: a date part whose
        name is taken (a date ``t`` beside a column ``t.month``) is ``t.month (date
        part)``. Shown in the feature importance; LightGBM gets :func:`booster_feature_names`."""
        raw = {f.name for f in self.features}
        out: list[str] = []
        taken: set[str] = set()
        for f in self.features:
            for name in f.columns():
                if name != f.name and name in raw | taken:
                    name = f"{name} ({f.kind} part)"
                unique, n = name, 1
                while unique in taken:
                    n += 1
                    unique = f"{name} ({n})"
                taken.add(unique)
                out.append(unique)
        return out

    @property
    def categorical_indices(self) -> list[int]:
        out, i = [], 0
        for f in self.features:
            n = len(f.columns())
            if f.kind == "categorical":
                out.append(i)
            i += n
        return out

    @property
    def positive_class(self) -> Any:
        return self.classes[1] if self.task == "binary" and self.classes else None


_SIMPLE_TYPES: dict[str, pl.DataType] = {
    "Int8": pl.Int8(), "Int16": pl.Int16(), "Int32": pl.Int32(), "Int64": pl.Int64(),
    "UInt8": pl.UInt8(), "UInt16": pl.UInt16(), "UInt32": pl.UInt32(), "UInt64": pl.UInt64(),
    "Float32": pl.Float32(), "Float64": pl.Float64(), "String": pl.String(),
    "Boolean": pl.Boolean(), "Date": pl.Date(),
    "Null": pl.Null(),   # a column that has had no value yet: typed by its first values
}
_DATETIME = re.compile(r"Datetime\(time_unit='(ns|us|ms)', time_zone=(None|'([^']*)')\)")


_UNSAFE = re.compile(r"[^0-9A-Za-z_.-]+")


def booster_feature_names(columns: list[str]) -> list[str]:
    """The names LightGBM is given for the model's input columns: ``c<i>_`` and the name
    with anything but letters, digits, ``_``, ``.`` and ``-`` as ``_``, cut to 40
    characters. LightGBM refuses some characters (``[]{}":,``) and replaces whitespace;
    these are unique by their position and readable in model.txt. The mapping is the
    order: ``columns[i]`` is LightGBM's feature ``i`` (model.json keeps both)."""
    return [f"c{i}_{_UNSAFE.sub('_', name)[:40]}" for i, name in enumerate(columns)]


def category_counts(values: pl.Series) -> tuple[list[Any], list[int]]:
    """The distinct non-null values of ``values`` and how often each occurs, most frequent
    first, ties by value. Any column name works (Polars' ``value_counts`` names its count
    column ``count``, and refuses a series of that name)."""
    counts = (values.drop_nulls().rename("value").value_counts(name="n")
              .sort(["n", "value"], descending=[True, False]))
    return counts.get_column("value").to_list(), counts.get_column("n").to_list()


def dtype_from_name(name: str) -> pl.DataType | None:
    """The Polars type named by ``str(dtype)`` in a stored schema (None: not one we keep)."""
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    m = _DATETIME.fullmatch(name)
    if m:
        return pl.Datetime(m.group(1), m.group(3))  # type: ignore[arg-type]
    if name.startswith("Datetime"):
        unit = "ns" if "'ns'" in name else "ms" if "'ms'" in name else "us"
        return pl.Datetime(unit)
    return None


def infer_task(y: pl.Series) -> tuple[str, str]:
    """Guess the task from the target's type and cardinality; returns (task, why)."""
    values = y.drop_nulls()
    n_unique = values.n_unique()
    dtype = y.dtype
    if dtype == pl.Boolean:
        return "binary", "the target is boolean"
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        if n_unique <= 2:
            return "binary", f"the target is text with {n_unique} distinct values"
        return "multiclass", f"the target is text with {n_unique} distinct values"
    if dtype.is_integer():
        if n_unique <= 2:
            return "binary", f"the target is integer with {n_unique} distinct values"
        lo, hi = values.min(), values.max()
        if n_unique <= min(MULTICLASS_MAX_CLASSES, 20) and lo >= 0 and hi < 2 * n_unique:
            return "multiclass", (
                f"the target is integer with {n_unique} distinct small values ({lo}..{hi})"
            )
        return "regression", f"the target is integer with {n_unique} distinct values"
    if dtype.is_float():
        if n_unique == 2 and set(values.unique().to_list()) == {0.0, 1.0}:
            return "binary", "the target is a float holding only 0 and 1"
        return "regression", f"the target is a float with {n_unique} distinct values"
    raise ApplianceError(
        "target_type",
        f"the target column `{y.name}` has type {dtype}, which no task can learn; "
        "use numbers, booleans or text",
    )


def feature_kind(dtype: pl.DataType) -> Kind | None:
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "numeric"
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        return "categorical"
    if dtype == pl.Datetime or isinstance(dtype, pl.Datetime):
        return "datetime"
    if dtype == pl.Date:
        return "date"
    return None


def build_spec(df: pl.DataFrame, settings: PipelineSettings, task: str) -> FeatureSpec:
    """Decide features and encodings from the training frame."""
    if settings.target not in df.columns:
        raise ApplianceError(
            "missing_target", f"the target column `{settings.target}` is not in the data",
            {"column": settings.target},
        )
    skip = {settings.target, settings.id, settings.timestamp}
    features: list[Feature] = []
    for name, dtype in df.schema.items():
        if name in skip:
            continue
        kind = feature_kind(dtype)
        if kind is None:
            continue  # nested or binary columns carry nothing a tree can split on
        categories = None
        if kind == "categorical":
            # Most frequent first; ties broken by the value, so the order is reproducible.
            values, _ = category_counts(df.get_column(name).cast(pl.String))
            categories = values[:MAX_CATEGORIES]
        features.append(Feature(name=name, kind=kind, dtype=str(dtype), categories=categories))
    if not features:
        raise ApplianceError(
            "no_features", "the data has no usable feature column besides the target, id "
            "and timestamp", {"columns": df.columns},
        )
    classes = None
    if task in ("binary", "multiclass"):
        classes = sorted(df.get_column(settings.target).drop_nulls().unique().to_list())
        if task == "binary" and len(classes) != 2:
            raise ApplianceError(
                "target_classes",
                f"a binary target needs exactly 2 classes; `{settings.target}` has "
                f"{len(classes)} ({classes[:5]})",
                {"column": settings.target, "classes": len(classes)},
            )
        if task == "multiclass" and len(classes) > MULTICLASS_MAX_CLASSES:
            raise ApplianceError(
                "target_classes",
                f"`{settings.target}` has {len(classes)} classes; at most "
                f"{MULTICLASS_MAX_CLASSES} are supported for multiclass",
            )
    return FeatureSpec(task=task, target=settings.target, classes=classes, features=features)


def _feature_exprs(spec: FeatureSpec) -> list[pl.Expr]:
    """One expression per input column of the model, named by ``spec.columns`` (unique)."""
    exprs: list[pl.Expr] = []
    for f in spec.features:
        col = pl.col(f.name)
        if f.kind == "categorical":
            codes = {c: float(i) for i, c in enumerate(f.categories or [])}
            exprs.append(
                col.cast(pl.String).replace_strict(codes, default=None, return_dtype=pl.Float64)
            )
        elif f.kind in ("datetime", "date"):
            parts = {"month": col.dt.month(), "day": col.dt.day(), "weekday": col.dt.weekday(),
                     "hour": col.dt.hour()}
            names = DATETIME_PARTS if f.kind == "datetime" else DATE_PARTS
            exprs += [parts[p].cast(pl.Float64) for p in names]
        else:
            exprs.append(col.cast(pl.Float64))
    return [e.alias(name) for e, name in zip(exprs, spec.columns, strict=True)]


def to_matrix(df: pl.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The model's input matrix (float64, C order, NaN for missing) from a frame."""
    missing = [f.name for f in spec.features if f.name not in df.columns]
    if missing:
        raise ApplianceError(
            "missing_features", f"the data lacks feature columns {missing}", {"columns": missing}
        )
    out = df.select(_feature_exprs(spec)).fill_nan(None)
    return np.ascontiguousarray(out.to_numpy(order="c"), dtype=np.float64)


def to_matrices(df: pl.DataFrame, spec: FeatureSpec,
                row_sets: list[np.ndarray]) -> list[np.ndarray]:
    """``to_matrix`` of several sets of rows of ``df`` (say, training and validation) at
    once, built one column at a time: no full-width copy of the frame or of the matrix is
    ever made, so the peak memory is the result plus one column."""
    missing = [f.name for f in spec.features if f.name not in df.columns]
    if missing:
        raise ApplianceError(
            "missing_features", f"the data lacks feature columns {missing}", {"columns": missing}
        )
    width = len(spec.columns)
    outs = [np.empty((len(rows), width), dtype=np.float64) for rows in row_sets]
    for j, expr in enumerate(_feature_exprs(spec)):
        column = df.select(expr).to_series().to_numpy().astype(np.float64, copy=False)
        for out, rows in zip(outs, row_sets, strict=True):
            out[:, j] = column[rows]
        del column
    return outs


def encode_target(y: pl.Series, spec: FeatureSpec) -> np.ndarray:
    if spec.task == "regression":
        return y.cast(pl.Float64).to_numpy()
    classes = spec.classes or []
    if y.dtype in (pl.Categorical, pl.Enum):
        y = y.cast(pl.String)
    codes = y.replace_strict(classes, [float(i) for i in range(len(classes))],
                             return_dtype=pl.Float64)
    return codes.to_numpy()


# --- serving: one JSON row at a time ------------------------------------------------------


class RowError(ApplianceError):
    def __init__(self, row: int, field: str, expected: str, got: Any) -> None:
        shown = preview(got)  # bounded: a value may be huge or deeply nested
        super().__init__(
            "invalid_row",
            f"row {row}: field `{field}` expected {expected}, got {shown}",
            {"row": row, "field": field, "expected": expected},
            status=422,
        )


def _parse_time(value: Any, row: int, f: Feature) -> datetime | date | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.date() if f.kind == "date" else parsed
        except ValueError:
            pass
    raise RowError(row, f.name, "an ISO 8601 date or time string, or null", value)


_NUMERIC, _CATEGORICAL, _BOOLEAN, _TIME = 0, 1, 2, 3
_NAN = math.nan


def _missing_feature(row: int, f: Feature) -> ApplianceError:
    return ApplianceError(
        "missing_feature",
        f"row {row}: feature `{f.name}` is missing; send it, or null if unknown",
        {"row": row, "field": f.name, "expected": f.kind},
        status=422,
    )


class RowEncoder:
    """Encodes request rows for one model; built once when the model is loaded.

    A row is a JSON object: a feature sent as null is missing; a feature not sent at all is
    an error, so a typo in a field name can't silently become a missing value. Fields that
    are not features (an id, a timestamp) are ignored. Every refusal is a 422 naming the
    row, the field and what was expected.

    This runs on every request, so it is written for speed: one pass over precomputed
    steps, floats appended to a list, no NumPy element writes.
    """

    # The longest text a request may send for a category unseen in training (a seen one
    # is as long as training made it): server.max_string_chars, set as the model is served.
    max_string_chars = 1024

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.width = len(spec.columns)
        self.names = tuple(f.name for f in spec.features)
        self._codes = {
            f.name: {c: float(i) for i, c in enumerate(f.categories or [])}
            for f in spec.features if f.kind == "categorical"
        }
        kinds = {"numeric": _NUMERIC, "categorical": _CATEGORICAL, "boolean": _BOOLEAN}
        self._steps = tuple(
            (f.name, kinds.get(f.kind, _TIME), self._codes.get(f.name), f)
            for f in spec.features
        )

    def _too_long(self, row: int, name: str, value: str) -> ApplianceError:
        limit = self.max_string_chars
        return ApplianceError(
            "invalid_row",
            f"row {row}: field `{name}` is {len(value)} characters long; a category is at most "
            f"{limit} (server.max_string_chars)",
            {"row": row, "field": name, "expected": f"a string of at most {limit} characters",
             "length": len(value), "limit": limit},
            status=422,
        )

    def encode(self, rows: list[Any]) -> np.ndarray:
        """The model's input matrix (float64, C order, NaN for missing) for request rows."""
        flat: list[float] = []
        for r, values in enumerate(rows):
            self.append_row(values, r, flat)
        return np.array(flat, dtype=np.float64).reshape(len(rows), self.width)

    def append_row(self, values: Any, row: int, out: list[float]) -> None:
        """Validate one request row and append its ``width`` encoded values to ``out``."""
        if not isinstance(values, dict):
            raise RowError(row, "(row)", "an object of feature values", values)
        append = out.append
        for name, kind, codes, f in self._steps:
            try:
                v = values[name]
            except KeyError:
                raise _missing_feature(row, f) from None
            if kind == _NUMERIC:
                t = type(v)
                if t is float:
                    if v - v != 0.0:  # inf - inf and nan - nan are nan
                        raise RowError(row, name, "a finite number or null", v)
                    append(v)
                elif t is int:
                    try:
                        append(float(v))
                    except OverflowError:
                        raise RowError(row, name, "a finite number or null", v) from None
                elif v is None:
                    append(_NAN)
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    try:
                        x = float(v)
                    except OverflowError:
                        x = math.inf
                    if not math.isfinite(x):
                        raise RowError(row, name, "a finite number or null", v)
                    append(x)
                else:
                    raise RowError(row, name, "a number or null", v)
            elif kind == _CATEGORICAL:
                if type(v) is str:
                    code = codes.get(v, _NAN)  # a category unseen in training is missing
                    if code != code and len(v) > self.max_string_chars:
                        raise self._too_long(row, name, v)
                    append(code)
                elif v is None:
                    append(_NAN)
                elif isinstance(v, str):
                    code = codes.get(str(v), _NAN)
                    if code != code and len(v) > self.max_string_chars:
                        raise self._too_long(row, name, v)
                    append(code)
                else:
                    raise RowError(row, name, "a string or null", v)
            elif kind == _BOOLEAN:
                if v is True:
                    append(1.0)
                elif v is False:
                    append(0.0)
                elif v is None:
                    append(_NAN)
                else:
                    raise RowError(row, name, "true, false or null", v)
            else:
                t = _parse_time(v, row, f)
                for p in DATETIME_PARTS if f.kind == "datetime" else DATE_PARTS:
                    if t is None:
                        append(_NAN)
                    elif p == "month":
                        append(float(t.month))
                    elif p == "day":
                        append(float(t.day))
                    elif p == "weekday":
                        append(float(t.isoweekday()))
                    else:
                        append(float(t.hour))  # type: ignore[union-attr]
