"""Each version's held-out rows, kept beside its model as ``holdout.parquet``.

Two things score models on rows they did not train on: the gate scores a challenger
beside the champion on the champion's own held-out rows (does it still know what the
champion knew?), and the backtest scores every version on the newest version's held-out
rows (like with like). Both need the rows exactly as they were held out, with the columns
the feature store joined and derived then. The gate also matches them, by content, to the
challenger's data: the challenger does not train on them (with a chronological split they
are older than its own held-out rows, so it would otherwise score them in sample), and
with a data window only those the window still holds are scored.

Why the rows themselves and not the data set versions and the split recorded in the
lineage: re-deriving them would depend on the feature sets' values today (a join of the
latest values changes as they change), on the window, and on Polars' row hash (a Polars
upgrade re-draws the split), and would read every data set again. The rows are small:
at most ``train.holdout_max_rows`` (a seeded sample beyond that), written with the model
in the same fsynced rename, their SHA-256 in model.json, which is itself hashed.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from appliance.core import ApplianceError

HOLDOUT_FILE = "holdout.parquet"
# The seed of the row hashes that match a kept row to the rows of a data window.
_KEY_SEED = 20_240_611


def holdout_sample(frame: pl.DataFrame, max_rows: int, seed: int) -> pl.DataFrame:
    """At most ``max_rows`` of a version's held-out rows (a seeded sample beyond that, in
    their original order)."""
    if frame.height <= max_rows:
        return frame
    rng = np.random.default_rng(seed)
    return frame[np.sort(rng.choice(frame.height, size=max_rows, replace=False))]


def holdout_file(frame: pl.DataFrame, of: int, prior: Any, timestamp: str | None
                 ) -> tuple[bytes, dict[str, Any]]:
    """The kept rows as Parquet bytes, and what model.json says of them: the file, its
    hash, how many rows of how many held out, their time range, and what the trivial
    baseline predicts (the training prior)."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    data = buffer.getvalue()
    first = last = None
    if timestamp and timestamp in frame.columns and frame.height:
        first, last = (str(frame.get_column(timestamp).min()),
                       str(frame.get_column(timestamp).max()))
    return data, {
        "file": HOLDOUT_FILE, "sha256": hashlib.sha256(data).hexdigest(),
        "rows": frame.height, "valid_rows": of, "first": first, "last": last,
        "baseline_prior": (np.asarray(prior, dtype=np.float64).tolist()
                           if prior is not None else None)}


def read_holdout(folder: Path, meta: dict[str, Any] | None, shown: str) -> pl.DataFrame:
    """A version's kept held-out rows, after checking them against the hash in its
    model.json. ``shown`` names the version in errors (``v3 of `machines```)."""
    if not meta or not meta.get("file"):
        raise ApplianceError(
            "holdout_not_kept",
            f"{shown} has no kept held-out rows (it was registered before versions kept "
            "them)", {})
    path = folder / meta["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ApplianceError("holdout_unreadable",
                             f"{shown}: its held-out rows can't be read ({path.name}: "
                             f"{exc.strerror})", {"file": str(path)}) from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise ApplianceError("holdout_corrupt",
                             f"{shown}: {path.name} does not match the hash in its "
                             "model.json", {"file": str(path)})
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # matches its hash yet unreadable: a Polars change, say
        raise ApplianceError("holdout_unreadable",
                             f"{shown}: {path.name} can't be read ({type(exc).__name__}: "
                             f"{exc})", {"file": str(path)}) from None


def row_keys(frame: pl.DataFrame, columns: list[str],
             dtypes: dict[str, pl.DataType] | None = None) -> np.ndarray:
    """A hash of each row's values in ``columns`` (cast to ``dtypes`` when given), to
    match rows between frames by their content."""
    cols = [pl.col(c).cast(dtypes[c]) if dtypes and c in dtypes else pl.col(c)
            for c in columns]
    return frame.select(cols).hash_rows(seed=_KEY_SEED).to_numpy()


def match_rows(frame: pl.DataFrame, rows: pl.DataFrame, schema: dict[str, str] | None
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Match an older version's kept held-out ``rows`` to the rows of a training ``frame``
    by content, on the pipeline's own columns (its schema; not the ones the feature store
    joined or derived, whose values may have changed since). Returns two masks: the
    frame's rows that are among ``rows``, and the ``rows`` the frame holds (those its
    data window still covers); None when they can't be matched (a column is missing or
    its type changed)."""
    columns = [c for c in frame.columns
               if (schema is None or c in schema) and c in rows.columns]
    if not columns:
        return None
    try:
        frame_keys = row_keys(frame, columns)
        row_keys_ = row_keys(rows, columns, {c: frame.schema[c] for c in columns})
    except pl.exceptions.PolarsError:
        return None
    return np.isin(frame_keys, row_keys_), np.isin(row_keys_, frame_keys)
