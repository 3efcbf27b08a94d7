"""Derived features of prediction rows: the plain-Python evaluator (``rowexpr``, what
``derive_rows`` uses when it can) against the Polars path it replaces, in one run.

``derive_rows`` per request (one row, and a batch of 10), medians over many calls, for:
the sample pipeline (``rpm_load = rpm / rated_rpm`` over Int64 columns), the feature store
test's pair (a float ratio, ``temperature * 1.8 + 32``), and a richer set (CASE WHEN, LN,
COALESCE, a decimal literal over an integer, a chain). Also the one-off cost of compiling
and self-checking a set (once per model, when it is loaded).

    python bench/derive.py [--calls 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from appliance.features import featurestore  # noqa: E402
from appliance.features.featurestore import derive_rows, derive_rows_polars  # noqa: E402

CASES: list[tuple[str, dict[str, str], dict[str, str], dict]] = [
    ("sample pipeline", {"rpm_load": "rpm / rated_rpm"},
     {"rated_rpm": "Int64", "rpm": "Int64"}, {"rpm": 1701, "rated_rpm": 1600}),
    ("ratio + F", {"load_ratio": "current / rated_current",
                   "temp_f": "temperature * 1.8 + 32"},
     {"current": "Float64", "rated_current": "Float64", "temperature": "Float64"},
     {"current": 21.0, "rated_current": 22.0, "temperature": 61.5}),
    ("richer set", {
        "load": "COALESCE(current, 0) / NULLIF(rated_current, 0)",
        "hot": "CASE WHEN temperature > 80 OR site = 'south' THEN 1 ELSE 0 END",
        "log_hours": "LN(hours + 1)",
        "rpm_k": "rpm / 1000.0",
        "stress": "load * GREATEST(vibration, 0.5) + hot",
    }, {"current": "Float64", "rated_current": "Float64", "temperature": "Float64",
        "site": "String", "hours": "Float64", "rpm": "Int64", "vibration": "Float64"},
     {"current": 21.0, "rated_current": 22.0, "temperature": 61.5, "site": "east",
      "hours": 431.0, "rpm": 1308, "vibration": 3.12}),
]


def per_call(fn: Callable[[list[dict]], None], rows: list[dict], calls: int) -> float:
    """Seconds per call of ``fn`` on fresh copies of ``rows`` (it fills them in)."""
    batches = [[dict(r) for r in rows] for _ in range(calls)]
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return (time.perf_counter() - start) / calls


def bench(name: str, exprs: dict[str, str], inputs: dict[str, str], row: dict,
          calls: int, rounds: int) -> None:
    featurestore._row_program.cache_clear()
    start = time.perf_counter()
    fast = featurestore.prepare_derived(exprs, inputs)
    compile_ms = (time.perf_counter() - start) * 1000
    assert fast, f"{name}: the evaluator does not cover these expressions"
    for n in (1, 10):
        rows = [dict(row) for _ in range(n)]
        a, b = [dict(r) for r in rows], [dict(r) for r in rows]
        derive_rows_polars(a, exprs, inputs)
        derive_rows(b, exprs, inputs)
        assert a == b, (a, b)
        times: dict[str, list[float]] = {"polars": [], "python": []}
        for _ in range(rounds):  # alternate, so that neither gets the warmer cache
            times["polars"].append(per_call(
                lambda r: derive_rows_polars(r, exprs, inputs), rows, calls // 4))
            times["python"].append(per_call(
                lambda r: derive_rows(r, exprs, inputs), rows, calls))
        polars_us = statistics.median(times["polars"]) * 1e6
        python_us = statistics.median(times["python"]) * 1e6
        print(f"  {name:<16} {n:>2} row{'s' if n > 1 else ' '}  polars {polars_us:8.1f} us"
              f"   python {python_us:7.1f} us   ratio {python_us / polars_us:6.3f}x"
              f"  ({polars_us / python_us:5.0f}x faster)")
    print(f"  {'':<16} compile + self-check once per model: {compile_ms:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"derive_rows per request, median of {args.rounds} rounds "
          f"(polars: {args.calls // 4} calls a round, python: {args.calls}):")
    for name, exprs, inputs, row in CASES:
        bench(name, exprs, inputs, row, args.calls, args.rounds)


if __name__ == "__main__":
    main()
