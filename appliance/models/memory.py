"""How many rows a training can hold in memory, estimated before it loads them.

A training holds the data window as a Polars frame, the encoded feature matrices (8 bytes a
value: categories are codes), LightGBM's binned data set and the validation predictions.
Measured on 1,000,000 rows (``train()``, peak RSS): 20 numeric features took 2.6 times the
frame's size beside the frame, 10 numeric and 4 text features 2.8 times. The estimate per
row is the frame's row plus three 8-byte values per column, a little above both.

A box that runs out of memory in the middle of a training has its daemon killed (serving
with it), so a window too large for the box is cut to its newest rows that fit, and the
training says so, rather than being tried until it kills the box."""

from __future__ import annotations

from typing import Any

import psutil

MiB = 1024 * 1024
AUTO_SHARE = 0.8          # of the memory available when a training starts
_TEXT_BYTES = 32          # a string value in a Polars frame (its view and a short text)
_MATRIX_FACTOR = 3        # 8-byte values per column beside the frame, for training


def bytes_per_row(schema: dict[str, str]) -> int:
    """The memory one row takes in training, from the pipeline's schema (type names)."""
    frame = 0
    for dtype in schema.values():
        name = dtype.split("(")[0]
        if name == "Boolean":
            frame += 1
        elif name in ("String", "Categorical", "Enum"):
            frame += _TEXT_BYTES
        else:
            frame += 8
    return frame + _MATRIX_FACTOR * 8 * len(schema)


def budget_bytes(limit_mb: int) -> int:
    """The memory a training may take: the setting, else a share of what is available."""
    if limit_mb:
        return limit_mb * MiB
    return int(psutil.virtual_memory().available * AUTO_SHARE)


def rows_that_fit(schema: dict[str, str] | None, rows: int,
                  limit_mb: int) -> tuple[int | None, dict[str, Any]]:
    """The most rows the training may load (None: all of them fit), and the numbers."""
    if not schema or rows <= 0:
        return None, {}
    per_row = bytes_per_row(schema)
    budget = budget_bytes(limit_mb)
    numbers = {"estimated_mb": round(rows * per_row / MiB, 1),
               "budget_mb": round(budget / MiB, 1), "bytes_per_row": per_row,
               "budget": "train.memory_limit_mb" if limit_mb else
               f"{AUTO_SHARE:.0%} of the memory available"}
    if rows * per_row <= budget:
        return None, numbers
    return max(1, budget // per_row), numbers
