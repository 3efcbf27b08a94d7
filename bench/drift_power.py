"""Drift detection: false-alarm rate and power per sample size, beside SciPy used directly.

For each sample size (30, 100, 300, 1,000, 10,000, 100,000 rows) batches are drawn from
the reference's own distribution (no shift: every flag is a false alarm) and with one
feature changed: a 0.5 SD and a 1 SD mean shift, a variance change (SD x 1.5), a dead
column (every value missing) and a change in category shares (0.4/0.3/0.2/0.1 to a
quarter each). The data mixes the kinds a box sees: normal, skewed (lognormal), small
integers, a boolean, a 40-level categorical with rare levels, a numeric and a categorical
column with 5% missing values. Each seed draws a new reference (5,000 training rows) and
profiles it as training does.

  ours   ``drift.evaluate`` on the profile kept in model.json (tests up to 1,000 rows,
         Holm-corrected at ``drift.alpha``; effect sizes above)
  floor  SciPy used directly on the raw reference rows: ``ks_2samp`` per numeric
         feature, ``chi2_contingency`` per categorical feature and per feature for the
         missing share, Bonferroni-corrected at the same alpha, at every size

A batch "alarms" when any feature is flagged (the false-alarm rate); a change is
"detected" when the changed feature is flagged. Targets: false alarms at most 5% at
every size; power at least 90% for 1 SD at 100 rows and for 0.5 SD at 300 rows; checking
a 100-row batch under 20 ms (median).

    .venv/bin/python bench/drift_power.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import polars as pl
from scipy import stats

from appliance.core import DriftSettings
from appliance.features import Feature, FeatureSpec, profile
from appliance.monitoring import drift

SIZES = (30, 100, 300, 1_000, 10_000, 100_000)
REFERENCE_ROWS = 5_000
NUMERIC = ["normal", "skewed", "count", "flag", "gappy"]
CATEGORICAL = ["level", "shares", "gappy_cat"]
LEVELS = [f"L{i:02d}" for i in range(40)]
LEVEL_P = np.array([1 / (i + 1) ** 1.3 for i in range(40)])
LEVEL_P /= LEVEL_P.sum()
SHARES = ["a", "b", "c", "d"]
SHARES_P = np.array([0.4, 0.3, 0.2, 0.1])
SHARES_CHANGED = np.array([0.25, 0.25, 0.25, 0.25])

SPEC = FeatureSpec(task="regression", target="y", classes=None, features=[
    *(Feature(name=n, kind="numeric", dtype="Float64") for n in NUMERIC),
    *(Feature(name=n, kind="categorical", dtype="String") for n in CATEGORICAL),
])

# scenario -> (feature it changes, how)
SCENARIOS: dict[str, str] = {
    "none": "",
    "mean +0.5 SD": "normal",
    "mean +1 SD": "normal",
    "SD x 1.5": "normal",
    "dead column": "skewed",
    "category shares": "shares",
}


def draw(n: int, rng: np.random.Generator, scenario: str = "none") -> pl.DataFrame:
    normal = rng.normal(10.0, 2.0, n)
    if scenario == "mean +0.5 SD":
        normal = normal + 1.0
    elif scenario == "mean +1 SD":
        normal = normal + 2.0
    elif scenario == "SD x 1.5":
        normal = 10.0 + (normal - 10.0) * 1.5
    skewed: list[float | None] | np.ndarray = rng.lognormal(1.0, 0.8, n)
    if scenario == "dead column":
        skewed = [None] * n
    gappy = rng.gamma(2.0, 3.0, n)
    gappy_cat = rng.choice(["x", "y", "z"], n, p=[0.5, 0.3, 0.2]).astype(object)
    gappy_null = rng.uniform(size=n) < 0.05
    gappy_cat[rng.uniform(size=n) < 0.05] = None
    shares_p = SHARES_CHANGED if scenario == "category shares" else SHARES_P
    return pl.DataFrame({
        "normal": normal,
        "skewed": pl.Series(skewed, dtype=pl.Float64),
        "count": rng.poisson(2.0, n).astype(np.float64),
        "flag": (rng.uniform(size=n) < 0.2).astype(np.float64),
        "gappy": pl.Series(np.where(gappy_null, np.nan, gappy)).fill_nan(None),
        "level": rng.choice(LEVELS, n, p=LEVEL_P),
        "shares": rng.choice(SHARES, n, p=shares_p),
        "gappy_cat": pl.Series(gappy_cat.tolist(), dtype=pl.String),
    })


class Floor:
    """SciPy's tests on the raw reference rows, Bonferroni-corrected."""

    def __init__(self, ref: pl.DataFrame, alpha: float) -> None:
        self.ref = ref
        self.alpha = alpha
        self.values = {c: ref[c].drop_nulls().to_numpy() for c in NUMERIC}
        self.counts = {c: dict(ref[c].drop_nulls().value_counts().iter_rows())
                       for c in CATEGORICAL}
        self.nulls = {c: ref[c].null_count() for c in ref.columns}

    def flagged(self, cur: pl.DataFrame) -> set[str]:
        pvalues: list[tuple[str, float]] = []
        n_ref = self.ref.height
        for c in cur.columns:
            nulls = cur[c].null_count()
            if nulls or self.nulls[c]:
                table = [[nulls, cur.height - nulls], [self.nulls[c], n_ref - self.nulls[c]]]
                pvalues.append((c, float(stats.chi2_contingency(table).pvalue)))
            else:
                pvalues.append((c, 1.0))
        for c in NUMERIC:
            x = cur[c].drop_nulls().to_numpy()
            p = float(stats.ks_2samp(self.values[c], x).pvalue) if len(x) else 1.0
            pvalues.append((c, p))
        for c in CATEGORICAL:
            counts = dict(cur[c].drop_nulls().value_counts().iter_rows())
            keys = sorted(set(counts) | set(self.counts[c]))
            table = np.array([[counts.get(k, 0) for k in keys],
                              [self.counts[c].get(k, 0) for k in keys]])
            p = float(stats.chi2_contingency(table).pvalue) if len(keys) > 1 and \
                table[0].sum() else 1.0
            pvalues.append((c, p))
        m = len(pvalues)
        return {c for c, p in pvalues if p * m <= self.alpha}


def reference(seed: int) -> tuple[dict, pl.DataFrame]:
    ref = draw(REFERENCE_ROWS, np.random.default_rng(seed))
    return json.loads(json.dumps(profile.reference_stats(ref, SPEC))), ref


def ours_flagged(ref: dict, cur: pl.DataFrame, settings: DriftSettings) -> set[str]:
    report = drift.evaluate(ref, cur, settings, pipeline="bench", model_version=1,
                            source="ingestion")
    return {f.feature for f in report.features if f.drifted}


def reps_for(n: int, quick: bool) -> int:
    full = 400 if n <= 1_000 else (200 if n <= 10_000 else 60)
    return max(20, full // 5) if quick else full


def median_ms(fn: Callable[[], object], repeats: int = 41) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a fifth of the batches")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    settings = DriftSettings()
    refs = [reference(1000 + s) for s in range(args.seeds)]
    floors = [Floor(raw, settings.alpha) for _, raw in refs]
    started = time.monotonic()

    rows = []
    for which, (scenario, target) in enumerate(SCENARIOS.items()):
        for n in SIZES:
            reps = reps_for(n, args.quick) if scenario == "none" else \
                max(10, reps_for(n, args.quick) // 4)
            hits = [0, 0]
            for r in range(reps):
                k = r % len(refs)
                rng = np.random.default_rng([which, n, r])  # the same batches every run
                cur = draw(n, rng, scenario)
                for j, flagged in enumerate((ours_flagged(refs[k][0], cur, settings),
                                             floors[k].flagged(cur))):
                    hits[j] += bool(flagged) if not target else target in flagged
            rows.append((scenario, n, reps, hits[0] / reps, hits[1] / reps))
            print(f"  {scenario:<16} {n:>7,} rows  {reps:>4} batches  ours "
                  f"{hits[0] / reps:6.1%}  floor {hits[1] / reps:6.1%}", file=sys.stderr)

    print(f"drift detection: reference {REFERENCE_ROWS:,} rows x {len(refs)} seeds, "
          f"{len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical features, "
          f"alpha {settings.alpha}, tests up to {settings.test_max_rows:,} rows")
    print("  'none': share of batches with any feature flagged (false alarms); otherwise "
          "share with the changed feature flagged (power). ours / floor (SciPy directly)")
    header = f"  {'scenario':<16}" + "".join(f"{n:>15,}" for n in SIZES)
    print(header)
    for scenario in SCENARIOS:
        cells = {n: (o, f) for s, n, _, o, f in rows if s == scenario}
        print(f"  {scenario:<16}" + "".join(
            f"{cells[n][0]:>8.0%} / {cells[n][1]:<4.0%}" for n in SIZES))
    counts = {s: [r for s2, n, r, _, _ in rows if s2 == s] for s in ("none", "mean +1 SD")}
    print("  batches per cell: no shift " + "/".join(map(str, counts["none"]))
          + ", each change " + "/".join(map(str, counts["mean +1 SD"])))

    # Speed: one 100-row batch, ours on the profile beside the floor on raw rows.
    rng = np.random.default_rng(5)
    cur = draw(100, rng)
    ref, _ = refs[0]
    t_ours = median_ms(lambda: drift.evaluate(ref, cur, settings, pipeline="bench",
                                              model_version=1, source="ingestion"))
    t_floor = median_ms(lambda: floors[0].flagged(cur))
    print(f"  checking a 100-row batch ({len(cur.columns)} features), median: ours "
          f"{t_ours:.2f} ms, floor {t_floor:.2f} ms, ratio {t_ours / t_floor:.2f}x "
          "(target < 20 ms)")

    fa = max(o for s, _, _, o, _ in rows if s == "none")
    p1 = next(o for s, n, _, o, _ in rows if s == "mean +1 SD" and n == 100)
    p05 = next(o for s, n, _, o, _ in rows if s == "mean +0.5 SD" and n == 300)
    ok = fa <= 0.05 and p1 >= 0.9 and p05 >= 0.9 and t_ours < 20
    print(f"  worst false-alarm rate {fa:.1%} (<= 5%), power 1 SD at 100 rows {p1:.0%} "
          f"(>= 90%), 0.5 SD at 300 rows {p05:.0%} (>= 90%): "
          f"{'targets met' if ok else 'TARGETS MISSED'}  [{time.monotonic() - started:.0f} s]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
