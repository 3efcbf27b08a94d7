"""Dates written as text in a pipeline's first file.

The timestamp column (``[pipelines.NAME] timestamp``, a feature set's ``timestamp``) orders
the rows: the newest are held out to validate a model, and a window in days counts back
from it. Text sorts wrongly (``10/1/2026`` before ``9/30/2026``), so the column must hold
times: read as such by Polars, parsed with ``timestamp_format`` when one is set, or the
file is refused saying how to fix it.

Polars reads ``01/02/2026`` day first (1 February). Where every day and month of a column
is 12 or less, the file can't say whether that is right: for the timestamp column this
refuses the file unless ``timestamp_format`` says the order; for another date column it is
a warning on the ingestion.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from appliance.core import ApplianceError
from appliance.ingest.work import Work

# Day and month as the first two numbers, either order: 1/2/2026, 01-02-26 13:05.
_DAY_MONTH = re.compile(r"\s*(\d{1,2})[/-](\d{1,2})[/-](\d{2}|\d{4})\b")
_SAMPLE = 10_000


def day_month_order(values: Iterable[Any]) -> str | None:
    """For dates written NN/NN/YYYY (or with dashes): ``"DMY"`` or ``"MDY"`` when a value
    proves the order (a first or a second number over 12), ``"ambiguous"`` when none does;
    None when the values are not written so."""
    first_big = second_big = seen = False
    for v in values:
        if v is None:
            continue
        m = _DAY_MONTH.match(str(v))
        if m is None:
            return None
        seen = True
        first_big |= int(m.group(1)) > 12
        second_big |= int(m.group(2)) > 12
    if not seen or (first_big and second_big):
        return None
    if first_big:
        return "DMY"
    if second_big:
        return "MDY"
    return "ambiguous"


def _config_key(work: Work) -> str:
    return f"[{work.section}] timestamp_format"


def _example(values: Iterable[Any]) -> str:
    return next((str(v) for v in values if v is not None), "")


def not_a_time(work: Work, column: str, example: str, why: str) -> ApplianceError:
    return ApplianceError(
        "bad_timestamp",
        f"`{work.name}`: column `{column}` is the timestamp of `{work.pipeline}`, which orders "
        f"its rows (the newest validate each model), but {why} (first value: "
        f"{example[:60]!r}). Write it as ISO 8601 (2026-01-31 13:05:00), or set "
        f"{_config_key(work)} = \"...\" in appliance.toml to the format it is in, as "
        "strftime writes it (\"%m/%d/%Y %I:%M %p\" for 1/31/2026 1:05 PM, \"%d/%m/%Y %H:%M\" "
        "for 31/01/2026 13:05)",
        {"column": column, "value": example[:200],
         "config_key": f"{work.section}.timestamp_format"})


def parse_timestamp(column: str, fmt: str) -> pl.Expr:
    """The timestamp column's text as times, by the configured format; null where a value
    does not match it (the file is then refused at that value)."""
    return pl.col(column).cast(pl.String).str.strip_chars().str.to_datetime(
        format=fmt, strict=False, time_unit="us")


def check_first(work: Work, schema: dict[str, Any], text_head: pl.DataFrame | None) -> None:
    """Judge the first file's date columns from the types read and the text of its first
    rows (``text_head``, every column as text; None for Parquet): refuse a timestamp column
    that is text or whose day and month order can't be told; warn of another date column
    read day first without proof."""
    ts = work.timestamp
    for col, dtype in schema.items():
        is_date = dtype == pl.Date or isinstance(dtype, pl.Datetime)
        if col == ts and work.timestamp_format:
            continue  # parsed by the format (see parse_timestamp)
        if col == ts and dtype == pl.String:
            values = text_head[col] if text_head is not None and col in text_head.columns \
                else []
            order = day_month_order(values)
            why = ("its dates are written month first, which is read only with a format"
                   if order == "MDY" else "its values are text, not dates or times")
            raise not_a_time(work, col, _example(values), why)
        if not is_date or text_head is None or col not in text_head.columns:
            continue
        values = text_head[col].head(_SAMPLE)
        if day_month_order(values) != "ambiguous":
            continue
        example = _example(values)
        if col == ts:
            raise not_a_time(
                work, col, example, "its dates can be read day first or month first (every "
                "day and month in the first rows is 12 or less)")
        work.warnings.append(
            f"column `{col}`: dates such as {example!r} were read day first (1/2 as 1 "
            "February); if they are month first, write them as ISO 8601 (2026-01-02)")
