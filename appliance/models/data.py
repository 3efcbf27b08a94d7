"""The rows a model trains on: the pipeline's data set versions read as one frame, cut to
the configured window, with a row sent again under the same id kept once, as sent last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from appliance.core import ApplianceError, PipelineSettings


def read_datasets(paths: list[Path]) -> pl.DataFrame:
    """All data set versions as one frame, oldest first. Columns added later are null in
    older versions."""
    if not paths:
        raise ApplianceError("no_data", "the pipeline has no data set yet")
    frames = [pl.read_parquet(p) for p in paths]
    return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]


WINDOW_COLUMN = "__appliance_dataset_version"


@dataclass
class Source:
    """One data set version to train from: its number, its Parquet file and its rows."""

    version: int
    path: Path
    rows: int


@dataclass
class TrainingData:
    frame: pl.DataFrame
    rows_used: dict[int, int]  # data set version -> rows it gave after the window
    window: dict[str, Any]  # the window as configured and as applied


def load_training_data(sources: list[Source], settings: PipelineSettings) -> TrainingData:
    """The pipeline's data set versions (oldest first), cut to the configured window:
    every row, the newest ``window_rows`` rows (by timestamp when there is one, else by
    arrival), and/or the rows within ``window_days`` of the newest timestamp."""
    if not sources:
        raise ApplianceError("no_data", "the pipeline has no data set yet")
    rows_cap = settings.train.window_rows
    days = settings.train.window_days
    ts = settings.timestamp
    available = sum(s.rows for s in sources)
    window: dict[str, Any] = {"rows": rows_cap, "days": days, "available_rows": available}
    if rows_cap is None and days is None:
        frame = read_datasets([s.path for s in sources])
        window["kind"] = "all"
        if settings.id and settings.id in frame.columns and len(sources) > 1 \
                and frame.height == available:
            frame = frame.with_columns(pl.Series(WINDOW_COLUMN, np.repeat(
                [s.version for s in sources], [s.rows for s in sources]), dtype=pl.Int32))
            return _newest_per_id(frame, settings.id, window)
        return TrainingData(frame, {s.version: s.rows for s in sources}, window)
    if days is not None and not ts:
        raise ApplianceError(
            "window_needs_timestamp",
            "a window in days needs the pipeline's `timestamp` column; set it, or use "
            "`train.window_rows`", {"window_days": days},
        )
    chosen = sources
    if days is None and not ts:
        # Newest rows by arrival: only the newest files that hold them are read.
        chosen, total = [], 0
        for s in reversed(sources):
            chosen.insert(0, s)
            total += s.rows
            if total >= rows_cap:  # type: ignore[operator]
                break
    scans = [pl.scan_parquet(s.path).with_columns(pl.lit(s.version, pl.Int32).alias(
        WINDOW_COLUMN)) for s in chosen]
    lf = pl.concat(scans, how="diagonal_relaxed") if len(scans) > 1 else scans[0]
    kinds = []
    if days is not None:
        dtype = lf.collect_schema()[ts]
        if not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
            raise ApplianceError(
                "timestamp_type",
                f"a window in days needs the timestamp column `{ts}` to hold dates or times; "
                f"it holds {dtype}", {"column": ts, "dtype": str(dtype)},
            )
        newest = lf.select(pl.col(ts).max()).collect().item()
        if newest is not None:
            since = newest - timedelta(days=days)
            lf = lf.filter(pl.col(ts) >= since)
            window["from"] = str(since)
            window["to"] = str(newest)
        kinds.append(f"last {days:g} days")
    if rows_cap is not None:
        if ts:
            lf = lf.sort(ts, nulls_last=False, maintain_order=True)
        lf = lf.tail(rows_cap)
        kinds.append(f"last {rows_cap} rows")
    frame = lf.collect()
    window["kind"] = " and ".join(kinds)
    if settings.id and settings.id in frame.columns:
        return _newest_per_id(frame, settings.id, window)
    return _with_rows_used(frame, window)


def _with_rows_used(frame: pl.DataFrame, window: dict[str, Any]) -> TrainingData:
    counts = frame.get_column(WINDOW_COLUMN).value_counts()
    rows_used = {int(v): int(n) for v, n in counts.iter_rows()}
    return TrainingData(frame.drop(WINDOW_COLUMN), rows_used, window)


def _newest_per_id(frame: pl.DataFrame, id_col: str, window: dict[str, Any]) -> TrainingData:
    """A row sent again in a later data set with the same id (an export that overlaps the
    last one, a label corrected upstream) is trained on once, as it was sent last: without
    this, overlapping daily exports weigh old rows many times over, and a corrected label
    trains beside the wrong one. Only when the id is unique within every data set, as a
    row id is; an `id` that repeats within a file (a machine's id, say) replaces nothing,
    and the lineage says so. Rows without an id are all kept."""
    # Only the two key columns are looked at, and the frame is copied only when rows go:
    # a large window is not held twice.
    ids = pl.col(id_col)
    keys = frame.select(WINDOW_COLUMN, id_col).filter(ids.is_not_null())
    if keys.select(pl.struct(WINDOW_COLUMN, id_col).is_duplicated().any()).item():
        window["newest_per_id"] = (f"not applied: `{id_col}` repeats within a data set, so "
                                   "it is not a row id")
        return _with_rows_used(frame, window)
    keep = frame.select(ids.is_null() | ids.is_last_distinct()).to_series()
    replaced = keep.len() - int(keep.sum())
    if not replaced:
        return _with_rows_used(frame, window)
    window["replaced_rows"] = replaced
    window["kind"] = f"{window['kind']}, the newest row per `{id_col}`"
    return _with_rows_used(frame.filter(keep), window)
