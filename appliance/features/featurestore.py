"""The feature store: features declared once and computed the same way for training and
for serving.

- **Derived features** are Polars SQL expressions from the config (``pl.sql_expr``, never
  Python ``eval``). The same compiled expressions run on the training frame and on the rows
  of a prediction request, and a model stores the expressions it was trained with, so a
  served version always computes what it learned from. For request rows they are
  evaluated in plain Python where ``rowexpr`` can give Polars' exact values (checked
  against Polars when a model is loaded), and by Polars otherwise.
- **Feature sets** are tables keyed by an entity id (and optionally an event time), dropped
  into ``inbox/<feature_set>/`` and versioned like pipeline data.
- **Offline joins** give each training row the feature values as they were at that row's
  time (an as-of join, never a later value); without times, the latest values per key.
- **The online store** keeps the latest values per key of every feature set (SQLite, with
  a bounded cache of the keys requests ask for in front of it, ``online.py``), so a
  prediction may send only the entity key.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from appliance.core import ApplianceError, preview
from appliance.core.sqlexpr import compile_expression
from appliance.features import rowexpr
from appliance.features.online import OnlineStore
from appliance.features.spec import dtype_from_name

__all__ = ["DerivedFeatures", "FeatureStore", "OnlineStore", "RowDerivation", "fill_rows",
           "join_feature_set", "online_entries"]

log = logging.getLogger("appliance.featurestore")


class DerivedFeatures:
    """The compiled derived-feature expressions of one pipeline or one model, in order
    (a later expression may use an earlier one)."""

    def __init__(self, expressions: dict[str, str]) -> None:
        self.source = dict(expressions)
        self.compiled: list[tuple[str, pl.Expr]] = []
        for name, text in expressions.items():
            self.compiled.append((name, compile_expression(name, text)))

    def __bool__(self) -> bool:
        return bool(self.compiled)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.compiled]

    def inputs(self) -> set[str]:
        """The raw columns the expressions read (derived names excluded)."""
        roots: set[str] = set()
        for _, expr in self.compiled:
            roots |= set(expr.meta.root_names())
        return roots - set(self.names)

    def check_columns(self, available: Iterable[str]) -> None:
        """Every column an expression names must exist; the error names the feature."""
        known = set(available)
        for name, expr in self.compiled:
            missing = sorted(set(expr.meta.root_names()) - known)
            if missing:
                raise ApplianceError(
                    "derived_unknown_column",
                    f"derived feature `{name}` names unknown column(s) "
                    f"{', '.join(f'`{c}`' for c in missing)}",
                    {"feature": name, "missing": missing},
                )
            known.add(name)

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        for name, expr in self.compiled:
            frame = frame.with_columns(expr.alias(name))
        return frame


# --- offline: point-in-time joins --------------------------------------------------------


def latest_per_key(frame: pl.DataFrame, key: str, timestamp: str | None) -> pl.DataFrame:
    """One row per key: the newest by ``timestamp``, else the last one in file order."""
    if timestamp:
        frame = frame.sort(timestamp, nulls_last=False, maintain_order=True)
    return frame.group_by(key, maintain_order=True).last()


def join_feature_set(
    rows: pl.DataFrame,
    features: pl.DataFrame,
    *,
    key: str,
    row_time: str | None,
    feature_time: str | None,
    name: str,
) -> pl.DataFrame:
    """Join one feature set onto training rows by ``key``.

    With both times, each row gets the values as they were at the row's time: the newest
    feature row at or before it (a backward as-of join), never a later one. Otherwise the
    latest values per key. The feature set's own time column is not carried over: it is
    bookkeeping, not a feature.
    """
    if key not in rows.columns:
        raise ApplianceError(
            "join_key_missing",
            f"the data has no column `{key}` to join feature set `{name}` on",
            {"feature_set": name, "key": key},
        )
    clash = (set(features.columns) - {key, feature_time or ""}) & set(rows.columns)
    if clash:
        raise ApplianceError(
            "join_column_clash",
            f"feature set `{name}` and the pipeline both have column(s) "
            f"{', '.join(sorted(clash))}; rename one side",
            {"feature_set": name, "columns": sorted(clash)},
        )
    features = features.with_columns(pl.col(key).cast(rows.schema[key], strict=False))
    if row_time and feature_time and row_time in rows.columns:
        right = features.sort(feature_time)
        left_dtype = rows.schema[row_time]
        if right.schema[feature_time] != left_dtype:
            right = right.with_columns(pl.col(feature_time).cast(left_dtype, strict=False))
        joined = rows.sort(row_time).join_asof(
            right, left_on=row_time, right_on=feature_time, by=key, strategy="backward",
            check_sortedness=False,
        )
        if feature_time != row_time and feature_time in joined.columns:
            joined = joined.drop(feature_time)
        return joined
    latest = latest_per_key(features, key, feature_time)
    if feature_time and feature_time in latest.columns:
        latest = latest.drop(feature_time)
    return rows.join(latest, on=key, how="left", maintain_order="left")


# --- online: the latest values per key ----------------------------------------------------


def online_entries(frame: pl.DataFrame, key: str, timestamp: str | None
                   ) -> dict[str, dict[str, Any]]:
    """The newest values per key of a feature set frame, as JSON-able dicts by key."""
    latest = latest_per_key(frame, key, timestamp)
    out: dict[str, dict[str, Any]] = {}
    for row in latest.to_dicts():
        k = row.pop(key)
        if k is None:
            continue
        out[str(k)] = {c: (v.isoformat() if hasattr(v, "isoformat") else v)
                       for c, v in row.items()}
    return out


def _scalar_or_preview(value: Any) -> Any:
    """A value sent in a request, as an error's details may echo it: a scalar as it is,
    anything else as a short preview (a nested value could be deep enough to fail the
    encoding of the error itself)."""
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return value if isinstance(value, str) and len(value) <= 200 else preview(value)


def fill_rows(
    rows: list[Any], feature_set: str, key: str, columns: list[str], store: OnlineStore,
    missing_key: str,
) -> None:
    """Fill the feature set's columns of each request row from the online store, in place.
    Values sent in the request win; a key with no stored values is missing (null) or an
    error naming the key, by the pipeline's ``missing_key`` policy. The keys the store
    does not hold in memory are read from SQLite in one query."""
    wanted = [row.get(key) for row in rows if isinstance(row, dict)
              and row.get(key) is not None and any(c not in row for c in columns)]
    if len(wanted) == 1:
        found = store.get(feature_set, wanted[0])
        known = {str(wanted[0]): found} if found is not None else {}
    else:
        known = store.get_many(feature_set, wanted) if wanted else {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            continue
        absent = [c for c in columns if c not in row]
        if not absent:
            continue
        value = row.get(key)
        stored = known.get(str(value)) if value is not None else None
        if stored is None:
            if missing_key == "error":
                raise ApplianceError(
                    "unknown_entity",
                    f"row {i}: no stored features for `{key}` = {preview(value)} in feature set "
                    f"`{feature_set}`; send {', '.join(absent)} in the row, or ingest the "
                    "entity first",
                    {"row": i, "field": key, "value": _scalar_or_preview(value),
                     "feature_set": feature_set},
                    status=422,
                )
            for c in absent:
                row[c] = None
            continue
        for c in absent:
            row[c] = stored.get(c)


# --- the service the daemon holds -------------------------------------------------------


class FeatureStore:
    """Feature sets of one daemon: their versions (offline) and latest values (online)."""

    def __init__(self, settings: Any, store: Any, root: Path) -> None:
        self.settings = settings
        self.store = store
        self.root = root
        bounds = settings.online_store
        # Requests read what the cache does not hold on a connection of their own.
        self._reader = store.online_reader()
        self.online = OnlineStore(self._reader.values, max_keys=bounds.max_keys,
                                  max_bytes=bounds.max_mb << 20)

    def names(self) -> list[str]:
        return sorted(self.settings.feature_sets)

    def load(self) -> None:
        """Warm the online store's memory at start: the keys updated last, up to its
        bound, shared between the feature sets (the rest is read when asked for)."""
        names = self.names()
        for name in names:
            share = max(1, self.online.max_keys // max(1, len(names)))
            self.online.load(name, self.store.online_recent(name, share))

    def on_ingested(self, name: str, dataset_path: str, dataset_version: int) -> int:
        """A new version of a feature set: update the online store with its newest values
        per key. Returns how many keys were written."""
        fs = self.settings.feature_sets[name]
        frame = pl.read_parquet(self.root / dataset_path)
        entries = online_entries(frame, fs.key, fs.timestamp)
        written = self.store.upsert_online_features(name, entries, dataset_version,
                                                    fs.timestamp)
        # Only the written keys held in memory are read again, from what SQLite kept (a
        # late, older row must not win in memory either).
        self.online.refresh(name, entries)
        return written

    def frame(self, name: str) -> pl.DataFrame:
        """Every version of a feature set, oldest first (its history, for as-of joins)."""
        paths = [self.root / d.path for d in self.store.datasets(name)]
        if not paths:
            raise ApplianceError(
                "feature_set_empty",
                f"feature set `{name}` has no data yet; drop a file into inbox/{name}/",
                {"feature_set": name},
            )
        frames = [pl.read_parquet(p) for p in paths]
        return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]

    def prepare(self, frame: pl.DataFrame, pipeline: Any) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The training frame of a pipeline: its rows joined to its feature sets (as of each
        row's time), then its derived features. Returns the frame and what a model must
        keep to compute the same at prediction time."""
        joins = []
        for name in pipeline.join:
            fs = self.settings.feature_sets[name]
            features = self.frame(name)
            before = set(frame.columns)
            frame = join_feature_set(frame, features, key=fs.key, row_time=pipeline.timestamp,
                                     feature_time=fs.timestamp, name=name)
            joins.append({"feature_set": name, "key": fs.key,
                          "columns": [c for c in frame.columns if c not in before]})
        derived = DerivedFeatures(pipeline.derived)
        inputs: dict[str, str] = {}
        if derived:
            derived.check_columns(frame.columns)
            inputs = {c: str(frame.schema[c]) for c in sorted(derived.inputs())}
            frame = derived.apply(frame)
        return frame, {"joins": joins, "derived": dict(pipeline.derived),
                       "derived_inputs": inputs}

    def prepare_rows(self, spec: Any, rows: list[Any], missing_key: str,
                     derivation: RowDerivation | None = None) -> list[Any]:
        """A prediction request's rows as the model was trained: feature set columns filled
        from the online store (values sent win), then the derived features: the served
        model's ``derivation``, compiled when it was loaded (else compiled from ``spec``).
        Rows are updated in place."""
        for join in spec.joins:
            fill_rows(rows, join["feature_set"], join["key"], join["columns"], self.online,
                      missing_key)
        if spec.derived:
            (derivation or RowDerivation(spec.derived, spec.derived_inputs)).apply(rows)
        return rows


@functools.lru_cache(maxsize=64)
def _compiled(expressions: tuple[tuple[str, str], ...]) -> DerivedFeatures:
    """Compiled once per set of expressions (a model's), not per request."""
    return DerivedFeatures(dict(expressions))


@functools.lru_cache(maxsize=64)
def _row_program(expressions: tuple[tuple[str, str], ...],
                 inputs: tuple[tuple[str, str], ...]) -> rowexpr.RowProgram | None:
    """The derived features compiled to plain Python for request rows, once per model;
    None when they must be computed with Polars (an expression or input type the
    evaluator doesn't cover, or a difference from Polars on the probe rows)."""
    derived = _compiled(expressions)
    names = ", ".join(derived.names)
    try:
        types: dict[str, pl.DataType] = {}
        for col, dtype_name in inputs:
            dtype = dtype_from_name(dtype_name)
            if dtype is None:
                raise rowexpr.Unsupported(f"input type {dtype_name}")
            types[col] = dtype
        program = rowexpr.RowProgram(derived.compiled, types)
        mismatch = program.self_check()
    except rowexpr.Unsupported as exc:
        log.info("derived_features_with_polars features=%s: %s", names, exc)
        return None
    except Exception:  # a fault of the evaluator must only cost speed
        log.warning("derived_fast_path_off features=%s: the Python evaluator failed; this "
                    "model computes its derived features with Polars", names, exc_info=True)
        return None
    if mismatch is not None:
        source = dict(expressions)
        name = next((n for n in derived.names if f"`{n}`" in mismatch), derived.names[0])
        log.warning("derived_fast_path_off feature=%s expression=%r: the Python evaluator "
                    "differs from Polars (%s); this model computes its derived features "
                    "with Polars", name, source.get(name), mismatch)
        return None
    return program


class RowDerivation:
    """A model's derived features for its request rows, compiled to plain Python and
    checked against Polars once (when the model is loaded), so a request only runs them."""

    def __init__(self, expressions: dict[str, str], inputs: dict[str, str]) -> None:
        self.expressions = dict(expressions)
        self.inputs = dict(inputs)
        self.program = _row_program(tuple(self.expressions.items()),
                                    tuple(self.inputs.items()))

    def apply(self, rows: list[Any]) -> None:
        """Compute the derived features of request rows, in place, with the input columns
        typed as they were in training (so the same expression gives the same bits).

        Plain Python (``rowexpr``) when the model's expressions allow it: no DataFrame, and
        no wait for Polars' thread pool, which runs niced beside training. Polars otherwise,
        and for any request the evaluator hands back (a value to refuse, an integer
        overflow).

        Every row is computed as in a frame of many rows, as training computed it: Polars
        takes other kernels for a frame of one row (a column divided by a constant is a
        true division there, a multiplication by the reciprocal in a longer frame), so a
        lone row would otherwise get values a last bit away from what the model learned
        from."""
        program = self.program
        if program is not None:
            try:
                values = [program.run(row, True) for row in rows]
            except rowexpr.Fallback:
                pass
            except Exception:  # a fault of the evaluator: Polars computes, and it is reported
                if not program.reported:
                    program.reported = True
                    log.warning("derived_fast_path_error features=%s: the Python evaluator "
                                "failed on a request; Polars computed it",
                                ", ".join(self.expressions), exc_info=True)
            else:
                for row, derived_values in zip(rows, values, strict=True):
                    if isinstance(row, dict):
                        for name, value in derived_values.items():
                            if name not in row:
                                row[name] = value
                return
        derive_rows_polars(rows, self.expressions, self.inputs)


def prepare_derived(expressions: dict[str, str], inputs: dict[str, str]) -> bool:
    """Compile (and check) a set of derived features. True if requests compute them
    without Polars."""
    return RowDerivation(expressions, inputs).program is not None


def derive_rows(rows: list[Any], expressions: dict[str, str], inputs: dict[str, str]) -> None:
    """:meth:`RowDerivation.apply` for one set of rows (tools and tests; a served model
    keeps its :class:`RowDerivation`)."""
    RowDerivation(expressions, inputs).apply(rows)


def derive_rows_polars(rows: list[Any], expressions: dict[str, str],
                       inputs: dict[str, str]) -> None:
    """``derive_rows`` through Polars: a frame of the request rows, typed as in training
    (a lone row beside a copy of itself, so it is computed as in a frame of many)."""
    derived = _compiled(tuple(expressions.items()))

    def compute(framed: list[Any]) -> pl.DataFrame:
        columns: dict[str, pl.Series] = {}
        for col, dtype_name in inputs.items():
            values = [r.get(col) if isinstance(r, dict) else None for r in framed]
            try:
                columns[col] = pl.Series(col, values, dtype=dtype_from_name(dtype_name),
                                         strict=True)
            except Exception:
                raise _bad_input(rows, col, dtype_name) from None
        return derived.apply(pl.DataFrame(columns, height=len(framed)))

    if len(rows) == 1:
        try:
            frame = compute(rows * 2).head(1)
        except pl.exceptions.PolarsError:  # Polars fails on some frames it computes alone
            frame = compute(rows)
    else:
        frame = compute(rows)
    for name in derived.names:
        for row, value in zip(rows, frame.get_column(name).to_list(), strict=True):
            if isinstance(row, dict) and name not in row:
                row[name] = value


def _bad_input(rows: list[Any], col: str, dtype_name: str) -> ApplianceError:
    """Name the first row whose value of ``col`` can't be what training saw."""
    dtype = dtype_from_name(dtype_name)
    for i, row in enumerate(rows):
        value = row.get(col) if isinstance(row, dict) else None
        try:
            pl.Series(col, [value], dtype=dtype, strict=True)
        except Exception:
            return ApplianceError(
                "invalid_row", f"row {i}: field `{col}` expected {dtype_name} (a derived "
                f"feature is computed from it), got {preview(value)}",
                {"row": i, "field": col, "expected": dtype_name}, status=422,
            )
    return ApplianceError("invalid_row", f"field `{col}` expected {dtype_name}",
                          {"field": col, "expected": dtype_name}, status=422)
