"""Reading a data set version for a check (drift, suspect labels, the gate's score of an
imported model) without holding a huge one whole in memory."""

from __future__ import annotations

from pathlib import Path

import polars as pl

# Rows a check reads of one data set version: every one of a smaller version; of a larger
# one, every k-th row (a systematic sample, spread evenly over the file, so over time when
# it is in time order). At this size sampling noise is far under every threshold: PSI's is
# about bins / n, 4e-5 here.
CHECK_MAX_ROWS = 250_000


def read_rows(path: Path, rows: int | None, limit: int = CHECK_MAX_ROWS) -> pl.DataFrame:
    """A data set version's rows, or about ``limit`` of them evenly spread when it has more
    (read by a streaming scan: a file of tens of millions of rows never sits whole in
    memory). ``rows`` is its row count as recorded; None reads it all."""
    if rows is None or rows <= limit:
        return pl.read_parquet(path)
    step = -(-rows // limit)
    return pl.scan_parquet(path).gather_every(step).collect(engine="streaming")
