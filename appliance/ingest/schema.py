"""From what a dropped file holds to the pipeline's schema: one streaming pass from the
source to a Parquet file.

A pipeline's first file fixes its schema: its column types are inferred (from its first
``INFER_ROWS`` rows, or the whole file when a later value does not fit them) and kept as
types a data set may hold (:func:`kept_type`). A later file is cast to that schema, but only
losslessly (:func:`lossless`): a value that does not convert refuses the file, naming its
column, row and value (:func:`check_values`); extra columns are dropped. Rows without a
label are then dropped and counted (:func:`keep_labelled_rows`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import polars as pl

from appliance.core import ApplianceError
from appliance.features import dtype_from_name
from appliance.ingest.dates import check_first, not_a_time, parse_timestamp
from appliance.ingest.formats import (
    ROW_INDEX,
    PolarsFailure,
    polars_call,
    read_csv_head,
    read_csv_text_head,
    read_failure,
    scan_csv,
)
from appliance.ingest.outcomes import bad_value, unsupported_type
from appliance.ingest.work import Work

INFER_ROWS = 10_000                 # rows a first CSV file's column types are inferred from

# What spreadsheets, R, pandas, databases and the UCI data sets write for a missing value
# (compared lower-case, stripped). In a column of numbers, booleans or dates they are read
# as missing; in a text column they stay text (a category "NA" may be North America).
MISSING_MARKERS = ("na", "n/a", "nan", "null", "none", "#n/a", "#na", "<na>", "?", "-", "--")


def is_marker(text: pl.Expr) -> pl.Expr:
    """Whether a text value is one of :data:`MISSING_MARKERS`."""
    return text.str.strip_chars().str.to_lowercase().is_in(MISSING_MARKERS)


# --- types: what a pipeline's schema may hold, and lossless casts -----------------------


def kept_type(dtype: pl.DataType) -> pl.DataType | None:
    """The type a column is kept as in a data set, or None when the appliance can't use it
    (nested, binary, object, time of day, duration)."""
    if dtype.is_numeric() and not isinstance(dtype, pl.Decimal):
        return dtype
    if isinstance(dtype, pl.Decimal):
        return pl.Float64()
    if isinstance(dtype, (pl.Categorical, pl.Enum, pl.Null)) or dtype == pl.String:
        return pl.String()
    if dtype == pl.Boolean or dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return dtype
    return None


def _plain_types(lf: pl.LazyFrame) -> pl.LazyFrame:
    """A CSV scan whose inferred types are all ones a schema may hold (a time of day, which
    date parsing can infer, is kept as text)."""
    schema = polars_call(lf.collect_schema)
    if all(kept_type(t) == t for t in schema.values()):
        return lf
    return lf.with_columns(pl.col(c).cast(pl.String) for c, t in schema.items()
                           if kept_type(t) != t)


def lossless(col: str, have: pl.DataType, want: pl.DataType,
             decimal_comma: bool = False, time_format: str | None = None) -> pl.Expr:
    """``col`` as ``want``; null where a value does not convert without loss. Text read
    from a CSV with a decimal comma has its numbers written ``1,5``; text times are read
    by ``time_format`` when given."""
    x = pl.col(col)
    if have == want:
        return x
    if isinstance(have, pl.Null):
        return x.cast(want)
    if want == pl.String:
        return x.cast(pl.String)
    if have == pl.String or isinstance(have, (pl.Categorical, pl.Enum)):
        s = x.cast(pl.String).str.strip_chars()
        s = pl.when(~is_marker(s)).then(s)      # a missing marker is a missing value
        if want == pl.Boolean:
            low = s.str.to_lowercase()
            return (pl.when(low.is_in(["true", "1"])).then(pl.lit(True))
                    .when(low.is_in(["false", "0"])).then(pl.lit(False))
                    .otherwise(pl.lit(None, pl.Boolean)))
        if isinstance(want, pl.Datetime):
            return s.str.to_datetime(format=time_format, time_unit=want.time_unit,
                                     time_zone=want.time_zone, strict=False)
        if want == pl.Date:
            return s.str.to_date(format=time_format, strict=False)
        if decimal_comma and want.is_numeric():
            s = s.str.replace(",", ".", literal=True)
        y = s.cast(want, strict=False)
        if want.is_integer():
            f = s.cast(pl.Float64, strict=False)
            whole = (f == f.round(0)) & (f.abs() < 2.0**53)
            y = pl.coalesce(y, pl.when(whole).then(f.cast(want, strict=False)))
        return y
    if isinstance(have, pl.Datetime) and isinstance(want, pl.Datetime) \
            and have.time_zone != want.time_zone:
        if have.time_zone and want.time_zone:
            x = x.dt.convert_time_zone(want.time_zone)
        elif want.time_zone:
            x = x.dt.replace_time_zone(want.time_zone)
        else:
            x = x.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return x.dt.cast_time_unit(want.time_unit)
    y = x.cast(want, strict=False)
    return pl.when(y.cast(have, strict=False) == x).then(y)


# --- converting: one streaming pass from the source to a Parquet file -------------------


def convert(work: Work, path: Path, lf: pl.LazyFrame, have: dict[str, Any],
            schema: dict[str, str] | None, tmp: Path) -> None:
    """A dropped file to ``tmp``: the first of its pipeline fixes the schema, a later one is
    cast to it."""
    if schema is None:
        convert_first(work, path, lf, have, tmp)
    else:
        convert_to_schema(work, path, lf, have, schema, tmp)


def is_repeated_header(work: Work, err: ApplianceError) -> bool:
    """Whether a CSV's refusal may come from a line that repeats its header: a value equal
    to its column's name, or such a line among the rows types were inferred from."""
    if work.fmt == ".parquet":
        return False
    if err.code == "repeated_header":
        return True
    column, value = err.details.get("column"), err.details.get("value")
    return err.code == "bad_value" and isinstance(column, str) and value is not None \
        and str(value).strip() == column.strip()


def convert_first(work: Work, path: Path, lf: pl.LazyFrame, have: dict[str, Any],
                  tmp: Path) -> None:
    """The first file of a pipeline: its column types are inferred, and fix the schema."""
    ts = work.timestamp
    if work.fmt == ".parquet":
        texts = [c for c, t in have.items() if t == pl.String and c != ts]
        if texts:
            head = polars_call(lambda: lf.select(texts).head(INFER_ROWS).collect())
            lf = _markers_as_missing(work, lf, numbers_with_markers(head, texts, False))
            have = dict(polars_call(lf.collect_schema))
        exprs = []
        for col, dtype in have.items():
            kept = pl.Null() if dtype == pl.Null else kept_type(dtype)
            if kept is None:
                raise unsupported_type(work.name, col, dtype)
            exprs.append(pl.col(col) if kept == dtype else pl.col(col).cast(kept))
        check_first(work, have, None)
        sink(work, path, _timestamp_parsed(work, lf, have).select(exprs), tmp)
        return
    # Types from the first rows, read eagerly (fast), then one streaming pass with that
    # schema: a scan told to infer from INFER_ROWS rows itself is about half again slower
    # on a large file. When the head does not parse, the scan's own inference finds and
    # names the problem. A timestamp with a format is read as text and parsed by it.
    as_text = {ts: pl.String()} if ts and work.timestamp_format and ts in have else {}
    try:
        head_schema: Any = polars_call(
            lambda: read_csv_head(path, work, INFER_ROWS).schema)
        head_schema = {**head_schema, **as_text}
    except PolarsFailure:
        head_schema = None

    text_head: list[pl.DataFrame] = []

    def text() -> pl.DataFrame:
        if not text_head:
            text_head.append(polars_call(lambda: read_csv_text_head(path, work, INFER_ROWS)))
        return text_head[0]

    def first_pass(scan: pl.LazyFrame) -> None:
        scan = _plain_types(scan)
        if work.unnamed:
            scan = scan.select(work.named(list(polars_call(scan.collect_schema))))
        schema = dict(polars_call(scan.collect_schema))
        if any(t == pl.Date or isinstance(t, pl.Datetime) for t in schema.values()) or (
                ts in schema and schema[ts] == pl.String):
            check_first(work, schema, text())
        texts = [c for c, t in schema.items() if t == pl.String and c != ts]
        if texts:
            head = text().select(work.named(text().columns))
            if head.filter(pl.all_horizontal(pl.col(c).str.strip_chars() == c.strip()
                                             for c in head.columns)).height:
                raise ApplianceError(
                    "repeated_header", f"`{work.name}` repeats its header line among its "
                    "rows, written differently (spaces, quotes); remove those lines", {})
            numbers = numbers_with_markers(text(), texts, work.decimal_comma)
            scan = _markers_as_missing(work, scan, numbers)
            head = text()
            blank = [c for c in texts if c not in numbers and c in head.columns
                     and head[c].null_count() == head.height]
            if blank:
                scan = _empty_untyped(work, scan, blank)
        sink(work, path, _timestamp_parsed(work, scan, schema), tmp)

    try:
        if head_schema is not None:
            first_pass(scan_csv(path, work, schema=head_schema))
        else:
            first_pass(scan_csv(path, work, infer_schema_length=INFER_ROWS,
                                try_parse_dates=True, schema_overrides=as_text or None))
    except ApplianceError as err:
        if err.code != "bad_value" or err.details.get("column") == ts \
                or is_repeated_header(work, err):
            raise
        # A value past the rows the types were inferred from does not fit them (a 2.5
        # after ten thousand integers): infer from the whole file instead.
        first_pass(scan_csv(path, work, infer_schema_length=None, try_parse_dates=True,
                            schema_overrides=as_text or None))
        work.warnings.append(
            f"column types were inferred from the whole file, as `{err.details['column']}` "
            f"changes type after row {INFER_ROWS}")


def numbers_with_markers(head: pl.DataFrame, columns: list[str],
                         decimal_comma: bool) -> dict[str, tuple[pl.DataType, list[str]]]:
    """The text columns of a first file's rows ``head`` that hold only numbers and missing
    markers (at least one of each): each with the type its numbers take and the markers
    seen. A column of numbers with an `n/a` among them is a column of numbers."""
    found: dict[str, tuple[pl.DataType, list[str]]] = {}
    for col in columns:
        if col not in head.columns:
            continue
        v = head.select(pl.col(col).cast(pl.String).str.strip_chars().alias("v")).drop_nulls()
        marks = v.filter(is_marker(pl.col("v")))["v"].unique(maintain_order=True)
        rest = v.filter(~is_marker(pl.col("v")) & (pl.col("v") != ""))
        if marks.len() == 0 or rest.height == 0:
            continue
        number = pl.col("v").str.replace(",", ".", literal=True) if decimal_comma \
            else pl.col("v")
        for dtype in (pl.Int64(), pl.Float64()):
            if rest.select(number.cast(dtype, strict=False).is_null().any()).item() is False:
                found[col] = (dtype, marks.head(3).to_list())
                break
    return found


def _markers_as_missing(work: Work, lf: pl.LazyFrame,
                        found: dict[str, tuple[pl.DataType, list[str]]]) -> pl.LazyFrame:
    """``lf`` with the columns of :func:`numbers_with_markers` read as numbers, their
    markers as missing values. A column with other text further down than the rows looked
    at stays text."""
    found = dict(found)
    while found:
        casts = {c: lossless(c, pl.String(), dtype, work.decimal_comma)
                 for c, (dtype, _) in found.items()}
        try:
            check_values(work, lf, casts, {c: dtype for c, (dtype, _) in found.items()})
        except ApplianceError as err:
            if err.code != "bad_value" or err.details.get("column") not in found:
                raise
            del found[err.details["column"]]   # text after all: kept as text
            continue
        for col, (_, marks) in found.items():
            shown = ", ".join(repr(m) for m in marks)
            work.warnings.append(f"column `{col}` holds numbers: {shown} in it were read as "
                                 "missing values")
        return lf.with_columns(e.alias(c) for c, e in casts.items())
    return lf


def _empty_untyped(work: Work, lf: pl.LazyFrame, columns: list[str]) -> pl.LazyFrame:
    """``lf`` with the columns that have no value in the whole file left untyped (Null), so
    that the first later file with values in them gives them their type: a sensor that was
    off in the first export is a column of numbers, not text, once it sends numbers."""
    flags = polars_call(lambda: lf.select(pl.col(c).is_not_null().any() for c in columns)
                        .collect())
    empty = [c for c in columns if not flags[c][0]]
    if not empty:
        return lf
    work.warnings.append(
        f"column(s) {', '.join(f'`{c}`' for c in empty[:20])} have no value yet: each takes "
        "its type from the first later file that has values in it")
    return lf.with_columns(pl.lit(None).alias(c) for c in empty)


def _types_for_untyped(work: Work, path: Path, have: dict[str, Any],
                       columns: list[str]) -> dict[str, pl.DataType]:
    """Types for schema columns no earlier file had a value in, from this file's values,
    inferred as a first file's are (Null again when this file has none either)."""
    found: dict[str, pl.DataType] = {}
    if work.fmt == ".parquet":
        for col in columns:
            kept = pl.Null() if have[col] == pl.Null else kept_type(have[col])
            if kept is None:
                raise unsupported_type(work.name, col, have[col])
            found[col] = kept
    else:
        found = _csv_types_for_untyped(work, path, columns)
    typed = {c: t for c, t in found.items() if t != pl.Null}
    if typed:
        work.warnings.append("column(s) with no value until now take their type from this "
                             "file: " + ", ".join(f"`{c}` {t}" for c, t in typed.items()))
    return found


def _csv_types_for_untyped(work: Work, path: Path, columns: list[str]) -> dict[str, pl.DataType]:
    """From the first ``INFER_ROWS`` values of each column, read as text by one streaming
    pass, with the numbers-and-markers rule and then Polars' own inference."""
    found: dict[str, pl.DataType] = {}
    values = polars_call(lambda: scan_csv(path, work, infer_schema=False).select(
        pl.col(c).drop_nulls().head(INFER_ROWS).implode() for c in columns).collect())
    for col in columns:
        texts = pl.DataFrame({col: values[col][0]})
        if texts.height == 0:
            found[col] = pl.Null()
            continue
        numbers = numbers_with_markers(texts, [col], work.decimal_comma)
        if col in numbers:
            found[col] = numbers[col][0]
            continue
        buf = io.BytesIO()
        texts.write_csv(buf, separator="\t")
        data = buf.getvalue()
        dtype = polars_call(lambda data=data, col=col: pl.read_csv(
            data, separator="\t", try_parse_dates=True,
            decimal_comma=work.decimal_comma).schema[col])
        kept = kept_type(dtype) or pl.String()
        if kept == pl.Date or isinstance(kept, pl.Datetime):
            check_first(work, {col: kept}, texts)      # a day-first reading is warned of
        found[col] = kept
    return found


def _timestamp_parsed(work: Work, lf: pl.LazyFrame, schema: dict[str, Any]) -> pl.LazyFrame:
    """The scan with its timestamp column parsed by ``timestamp_format`` (when set and the
    column is text), refused at the first value that does not match it."""
    ts, fmt = work.timestamp, work.timestamp_format
    if not ts or not fmt or ts not in schema or schema[ts] != pl.String:
        return lf
    parsed = parse_timestamp(ts, fmt)
    try:
        check_values(work, lf, {ts: parsed}, {ts: f"a time written {fmt!r}"})
    except ApplianceError as err:
        raise not_a_time(work, ts, str(err.details.get("value")),
                         f"a value does not match {work.section}.timestamp_format = "
                         f"{fmt!r} at row {err.details.get('row')}") from None
    return lf.with_columns(parsed.alias(ts))


def convert_to_schema(work: Work, path: Path, lf: pl.LazyFrame,
                      have: dict[str, Any], schema: dict[str, str], tmp: Path) -> None:
    """A later file: keep the schema's columns in its order, cast what casts losslessly,
    refuse a value that does not (naming column, row and value), drop extras."""
    missing = [c for c in schema if c not in have]
    if missing:
        raise ApplianceError(
            "missing_columns",
            f"`{work.name}` lacks column(s) {', '.join(f'`{c}`' for c in missing[:20])} of "
            f"pipeline `{work.pipeline}`'s schema (fixed by its first file)",
            {"missing": missing, "schema": list(schema)},
        )
    extra = [c for c in have if c not in schema]
    if extra:
        shown = ", ".join(extra[:20]) + (f" and {len(extra) - 20} more" if len(extra) > 20
                                           else "")
        work.warnings.append(f"extra column(s) dropped: {shown}")
    wants = {c: dtype_from_name(t) for c, t in schema.items()}
    untyped = [c for c, w in wants.items() if w == pl.Null]
    if untyped:
        wants.update(_types_for_untyped(work, path, have, untyped))
    ts = work.timestamp if work.timestamp_format and work.timestamp in schema else None
    formats = {ts: work.timestamp_format} if ts else {}
    if work.fmt == ".parquet":
        for col in schema:
            if kept_type(have[col]) is None:
                raise unsupported_type(work.name, col, have[col])
        exprs = {c: lossless(c, have[c], w, time_format=formats.get(c)) if w is not None
                 else pl.col(c) for c, w in wants.items()}
        check_values(work, lf, {c: e for c, e in exprs.items() if have[c] != wants[c]
                                and wants[c] is not None}, wants)
        sink(work, path, lf.select(list(exprs.values())), tmp)
        return
    # CSV: the parser reads each column straight into its schema type. A column it can't
    # parse so (an integer column holding "3.0") is read as text and cast losslessly
    # instead, after a pass that finds the first value that does not cast.
    as_text: set[str] = set(formats)   # a timestamp with a format: text, parsed by it
    for _ in range(len(schema) + 1):
        overrides = {c: w for c, w in wants.items() if w is not None and w != pl.Null
                     and c not in as_text}
        scan = scan_csv(path, work, infer_schema=False, schema_overrides=overrides)
        casts = {c: lossless(c, pl.String(), wants[c], work.decimal_comma,  # type: ignore[arg-type]
                             formats.get(c))
                 for c in as_text}
        check_values(work, scan, casts, wants)
        exprs = [casts.get(c, pl.lit(None).alias(c) if wants[c] == pl.Null else pl.col(c))
                 for c in schema]
        try:
            sink(work, path, scan.select(exprs), tmp)
            return
        except ApplianceError as err:
            col = err.details.get("column")
            if err.code != "bad_value" or col not in wants or col in as_text:
                raise
            as_text.add(col)
    raise AssertionError("unreachable: every column was tried as text")


def check_values(work: Work, lf: pl.LazyFrame, casts: dict[str, pl.Expr],
                 wants: dict[str, pl.DataType | None]) -> None:
    """Refuse the file at the first value of ``casts`` that does not convert."""
    if not casts:
        return
    have = polars_call(lf.collect_schema)

    def given(c: str) -> pl.Expr:  # a value was there: not null, and not a missing marker
        if have.get(c) == pl.String:
            return pl.col(c).is_not_null() & ~is_marker(pl.col(c)).fill_null(False)
        return pl.col(c).is_not_null()

    bad = {c: (given(c) & e.is_null()) for c, e in casts.items()}
    flags = polars_call(lambda: lf.select([b.any().alias(c) for c, b in bad.items()]).collect())
    for col in casts:
        if flags[col][0]:
            found = polars_call(lambda col=col: lf.with_row_index(ROW_INDEX).filter(bad[col])
                                .select(ROW_INDEX, pl.col(col).cast(pl.String)).head(1).collect())
            row = int(found[ROW_INDEX][0]) + 1 if found.height else None
            value = found[col][0] if found.height else None
            raise bad_value(work, col, row, value, wants[col])


def keep_labelled_rows(work: Work, tmp: Path, target: str, role: str, max_rows: int) -> int:
    """The converted file ``tmp`` without its rows that have no ``target`` (a pipeline's
    target, or a feature set's key: its ``role``), counted in warnings, empty rows apart;
    refused when no row is left, or over ``max_rows``. Returns the rows kept."""
    # A text target's missing markers (`NA`, `?`, ...) are missing labels, not a class
    # (a feature set's key keeps them: it is an identifier).
    unlabelled = pl.col(target).is_null()
    if role == "target" and polars_call(
            lambda: pl.scan_parquet(tmp, glob=False).collect_schema())[target] == pl.String:
        unlabelled = unlabelled | is_marker(pl.col(target)).fill_null(False)
    stats = polars_call(lambda: pl.scan_parquet(tmp, glob=False).select(
        pl.len().alias("rows"), unlabelled.sum().alias("nulls")).collect())
    rows, nulls = int(stats["rows"][0]), int(stats["nulls"][0])
    if rows == 0:
        code = "header_only" if work.fmt != ".parquet" else "no_rows"
        raise ApplianceError(code, f"`{work.name}` has a header but no rows",
                             {"columns": list(polars_call(
                                 lambda: pl.scan_parquet(tmp, glob=False).collect_schema()))})
    if rows > max_rows:
        raise ApplianceError(
            "too_many_rows", f"`{work.name}` has {rows} rows, over the limit of "
            f"{max_rows} (ingest.max_rows)", {"rows": rows, "limit": max_rows})
    if nulls:
        if nulls == rows:
            raise ApplianceError(
                "no_rows", f"every row of `{work.name}` has a null {role} "
                f"`{target}`",
                {"column": target, "rows": rows})
        # Blank lines, or lines of separators only: every column read, so only now.
        blank = int(polars_call(lambda: pl.scan_parquet(tmp, glob=False).select(
            pl.all_horizontal(pl.all().is_null()).sum()).collect()).item())
        kept = tmp.with_name(tmp.name + ".kept")
        work.temps.append(kept)
        with work.timed("drop_null_targets"):
            polars_call(lambda: pl.scan_parquet(tmp, glob=False)
                        .filter(~unlabelled)
                        .sink_parquet(kept, sync_on_close="all"))
        os.replace(kept, tmp)
        if blank:
            work.warnings.append(f"{blank} empty rows were dropped")
        if nulls > blank:
            work.warnings.append(
                f"{nulls - blank} rows with a null {role} were dropped")
        rows -= nulls
    return rows


def sink(work: Work, path: Path, lf: pl.LazyFrame, tmp: Path) -> None:
    """Stream ``lf`` into the Parquet file ``tmp``; a failure refuses the dropped file."""
    try:
        polars_call(lambda: lf.sink_parquet(tmp, sync_on_close="all"))
    except PolarsFailure as exc:
        raise read_failure(work, exc) from None
