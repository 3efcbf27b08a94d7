"""Real files for the ingestion tests: a good data file, and one file per refusal.

Shared by the in-process tests (``test_ingest_files.py``) and the daemon tests
(``test_ingest_daemon.py``), so both check the same reasons.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl

# Limits the test state dirs are configured with, so the "too large" files stay small.
LIMITS = """
[ingest]
settle_seconds = 0.3
rescan_seconds = 1.0
max_file_mb = 1
max_columns = 40
max_rows = 50000
max_uncompressed_mb = 20
min_free_mb = 0
"""

NO_TRAINING = """
[pipelines.{name}.retrain]
min_new_rows = 1000000000
"""


def good_frame(n: int = 50, offset: int = 0) -> pl.DataFrame:
    i = pl.int_range(offset, offset + n, eager=True)
    return pl.DataFrame({
        "x": i,
        "y": (i * 0.5).cast(pl.Float64),
        "kind": pl.Series(["a", "b", "c"]).gather(i % 3),
        "target": i % 2,
    })


def good_csv(n: int = 50, offset: int = 0) -> bytes:
    return good_frame(n, offset).write_csv().encode()


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def _rows(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _bomb() -> bytes:
    # 40,000 rows of one 1,000-byte string: a few KB on disk, ~40 MB decoded.
    n = 40_000
    return _parquet(pl.DataFrame({"x": [1] * n, "y": [0.5] * n, "kind": ["k" * 1000] * n,
                                  "target": [1] * n}))


def _too_many_rows() -> bytes:
    return _parquet(good_frame(50_001).with_columns(pl.lit("a").alias("kind")))


# (file name, content, expected code); each needs the pipeline's schema fixed by good_csv().
REFUSALS: list[tuple[str, Callable[[], bytes], str]] = [
    ("report.xlsx", lambda: b"PK\x03\x04 not a csv", "unsupported_format"),
    ("empty.csv", lambda: b"", "empty_file"),
    ("blank.csv", lambda: b"\n\n  \n", "empty_file"),
    ("header_only.csv", lambda: b"x,y,kind,target\n", "header_only"),
    ("latin1.csv", lambda: "x,y,kind,target\n1,0.5,caf\u00e9,1\n".encode("latin-1"), "not_utf8"),
    ("ragged.csv", lambda: _rows(["x,y,kind,target", "1,0.5,a,1", "2,1.0,b,0,9,9"]),
     "unparseable"),
    ("broken.csv.gz", lambda: gzip.compress(good_csv())[:-30], "unparseable"),
    ("garbage.parquet", lambda: b"PAR1" + os.urandom(64) + b"PAR1", "unparseable"),
    ("bad_value.csv", lambda: _rows(["x,y,kind,target", "1,0.5,a,1", "2,1.0,b,0",
                                     "oops,1.5,c,1"]), "bad_value"),
    ("lossy.parquet", lambda: _parquet(pl.DataFrame(
        {"x": [1.0, 2.5], "y": [0.1, 0.2], "kind": ["a", "b"], "target": [0, 1]})),
     "bad_value"),
    ("no_target.csv", lambda: _rows(["x,y,kind", "1,0.5,a"]), "missing_target"),
    ("no_kind.csv", lambda: _rows(["x,y,target", "1,0.5,1"]), "missing_columns"),
    ("twice.csv", lambda: _rows(["x,y,kind,target,x", "1,0.5,a,1,2"]), "duplicate_columns"),
    ("wide.csv", lambda: _rows([",".join(["x", "y", "kind", "target"]
                                         + [f"c{i}" for i in range(60)]),
                                ",".join(["1", "0.5", "a", "1"] + ["0"] * 60)]),
     "too_many_columns"),
    ("huge.csv", lambda: b"x,y,kind,target\n" + b"1,0.5," + b"k" * 1_100_000 + b",1\n",
     "file_too_large"),
    ("gzip_bomb.csv.gz", lambda: gzip.compress(b"x,y,kind,target\n" + b"1,0.5,a,1\n" * 300_000),
     "file_too_large"),
    ("many_rows.parquet", _too_many_rows, "too_many_rows"),
    ("bomb.parquet", _bomb, "uncompressed_too_large"),
    ("null_targets.csv", lambda: _rows(["x,y,kind,target", "1,0.5,a,", "2,1.0,b,"]), "no_rows"),
    ("nested.parquet", lambda: _parquet(pl.DataFrame(
        {"x": [1], "y": [0.5], "kind": [["a", "b"]], "target": [1]})), "unsupported_type"),
]


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path
