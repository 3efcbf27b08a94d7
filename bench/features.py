"""Feature store speed, in one run.

1. Point-in-time join: 1,000,000 training rows against a feature set of 10,000 keys with
   history (10 versions per key): the appliance's join (``join_feature_set``) against a
   bare Polars ``join_asof`` of the same frames (the floor). Target: within 1.5x.
2. Online fill (``--predict``): a prediction that fills 10 features from the online store
   against one that sends them all, at concurrency 1, through the real daemon. Target:
   at most 1.3x the latency.

    python bench/features.py [--rows 1000000] [--keys 10000] [--repeat 5] [--predict]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from appliance.featurestore import join_feature_set  # noqa: E402

T0 = datetime(2026, 1, 1)


def frames(rows: int, keys: int, versions: int, seed: int = 0) -> tuple[pl.DataFrame, ...]:
    rng = np.random.default_rng(seed)
    span_s = 90 * 86400
    fs = pl.DataFrame({
        "entity": np.repeat(np.arange(keys), versions).astype(np.int64),
        "updated_at": pl.Series(
            rng.integers(0, span_s, keys * versions).astype("timedelta64[s]")
            + np.datetime64(T0, "us")),
        **{f"f{i}": rng.normal(size=keys * versions) for i in range(10)},
    })
    left = pl.DataFrame({
        "entity": rng.integers(0, keys, rows).astype(np.int64),
        "ts": pl.Series(rng.integers(0, span_s, rows).astype("timedelta64[s]")
                        + np.datetime64(T0, "us")),
        "x": rng.normal(size=rows),
        "target": rng.integers(0, 2, rows),
    })
    return left, fs


def timed_pair(a, b, repeat: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b``, run alternately so that neither gets the warmer cache."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def join_bench(rows: int, keys: int, repeat: int) -> None:
    left, fs = frames(rows, keys, 10)

    def floor() -> pl.DataFrame:
        return left.sort("ts").join_asof(fs.sort("updated_at"), left_on="ts",
                                         right_on="updated_at", by="entity",
                                         strategy="backward", check_sortedness=False)

    def ours() -> pl.DataFrame:
        return join_feature_set(left, fs, key="entity", row_time="ts",
                                feature_time="updated_at", name="bench")

    assert floor().drop("updated_at").equals(ours())
    floor_s, ours_s = timed_pair(floor, ours, repeat)
    print(f"point-in-time join, {rows:,} rows x {keys:,} keys x 10 versions "
          f"(median of {repeat}):")
    print(f"  floor  polars join_asof      {floor_s * 1000:8.1f} ms")
    print(f"  ours   join_feature_set      {ours_s * 1000:8.1f} ms")
    print(f"  ratio  {ours_s / floor_s:.2f}x (target <= 1.5x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    join_bench(args.rows, args.keys, args.repeat)


if __name__ == "__main__":
    main()
