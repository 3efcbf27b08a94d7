"""One feature against its reference profile: effect sizes and tests with a p-value.

Pure functions over NumPy (and SciPy's special functions); no I/O. The profile is
:func:`appliance.features.profile.numeric_stats` / ``categorical_stats``, as kept in
``model.json``: deciles, 101 percentiles with the reference distribution function at each,
category shares, the share missing and the count. Every model's profile has these, so
models trained before the tests existed are tested the same way.

Effect sizes (how far): the Population Stability Index over the reference deciles (plus a
bin for missing values), the Kolmogorov-Smirnov statistic at the reference percentiles,
and for categories the PSI and Jensen-Shannon distance. So that sampling noise alone
stays far under the thresholds, the number of PSI bins is capped by the sample sizes
(``NOISE_BUDGET``).

Tests (whether at all): for a numeric feature the two-sample Kolmogorov-Smirnov test (the
statistic at the reference percentiles, which is never above the exact one, so the test
errs on the safe side; its p-value from the Kolmogorov distribution at the effective size
n*N/(n+N) with Stephens' small-sample correction, as SciPy's asymptotic ``ks_2samp``
does) and a chi-square test of homogeneity over bins of equal reference mass (it sees a
change of spread or shape that KS is slow to see); for a categorical feature the
chi-square test over its categories; for every feature Fisher's exact test of the share
of missing values. Chi-square bins are chosen from the reference alone (never from the
sample being tested) and merged until each expects at least ``MIN_EXPECTED`` values in
both samples, where the chi-square distribution is a good approximation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import special

from appliance.features.profile import OTHER, as_float, category_counts, sorted_valid

EPS = 1e-4  # floor of a bin's share in PSI, so an empty bin costs a finite amount
NOISE_BUDGET = 0.01  # the largest expected PSI from sampling noise alone
MIN_EXPECTED = 5  # a category or test bin needs this many expected values in both samples
MAX_TEST_BINS = 10  # chi-square bins of a numeric feature (equal reference mass)
MAX_TEST_CATEGORIES = 30  # chi-square bins of a categorical feature


# --- the scores -------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population Stability Index of two distributions over the same bins (shares that
    each sum to 1): sum((a - e) * ln(a / e)), with empty bins floored at ``EPS``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def js(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon distance (natural log): the square root of the JS divergence."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else p
    q = q / q.sum() if q.sum() > 0 else q
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return float(math.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def ks(ref_cdf: Sequence[float] | np.ndarray, cur_cdf: Sequence[float] | np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: the largest gap between two distribution functions
    evaluated at the same points."""
    a = np.asarray(ref_cdf, dtype=np.float64)
    b = np.asarray(cur_cdf, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if len(a) else 0.0


def max_bins(n_current: int, n_reference: int) -> int:
    """How many value bins two samples of these sizes support within ``NOISE_BUDGET``."""
    if n_current <= 0 or n_reference <= 0:
        return 1
    return max(2, int(1 + NOISE_BUDGET / (1 / n_current + 1 / n_reference)))


# --- the tests --------------------------------------------------------------------------


def ks_pvalue(d: float, n: int, n_ref: int) -> float:
    """p-value of a two-sample KS statistic ``d`` for samples of ``n`` and ``n_ref``."""
    if n <= 0 or n_ref <= 0:
        return 1.0
    en = n * n_ref / (n + n_ref)
    root = math.sqrt(en)
    return float(min(1.0, special.kolmogorov(d * (root + 0.12 + 0.11 / root))))


def chi2_pvalue(current: np.ndarray, reference: np.ndarray) -> float:
    """Pearson's chi-square test of homogeneity of two samples' counts over the same bins
    (``reference`` may be shares times a count); 1.0 with fewer than two bins."""
    cur = np.asarray(current, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    keep = (cur + ref) > 0
    cur, ref = cur[keep], ref[keep]
    n, n_ref = cur.sum(), ref.sum()
    if len(cur) < 2 or n <= 0 or n_ref <= 0:
        return 1.0
    total = cur + ref
    e_cur = total * (n / (n + n_ref))
    e_ref = total * (n_ref / (n + n_ref))
    stat = float(np.sum((cur - e_cur) ** 2 / e_cur) + np.sum((ref - e_ref) ** 2 / e_ref))
    return float(special.chdtrc(len(cur) - 1, stat))


def missing_pvalue(nulls: int, total: int, ref_nulls: int, ref_total: int) -> float:
    """Fisher's exact test (two-sided) of the share of missing values in two samples: the
    chance, given all the missing values of both, that the current sample gets a count at
    most as likely as the one it got (SciPy's ``fisher_exact``, summed over the
    hypergeometric distribution in one vector, a hundred times faster)."""
    if total <= 0 or ref_total <= 0 or (nulls == 0 and ref_nulls == 0):
        return 1.0
    if nulls == total and ref_nulls == ref_total:
        return 1.0
    m, k, n = total + ref_total, nulls + ref_nulls, total
    lo, hi = max(0, n - (m - k)), min(n, k)
    x = np.arange(lo, hi + 1, dtype=np.float64)
    g = special.gammaln
    log_pmf = (g(k + 1) - g(x + 1) - g(k - x + 1) + g(m - k + 1) - g(n - x + 1)
               - g(m - k - n + x + 1) - g(m + 1) + g(n + 1) + g(m - n + 1))
    observed = log_pmf[nulls - lo]
    return float(min(1.0, np.exp(log_pmf[log_pmf <= observed + 1e-7]).sum()))


def merge_bins(ref_shares: np.ndarray, least: float) -> list[int]:
    """Group consecutive bins, left to right, so that each group holds at least ``least``
    of the reference mass (the last short group joins the one before). Returns the index
    of each group's last bin."""
    ends: list[int] = []
    acc = 0.0
    for i, share in enumerate(ref_shares):
        acc += share
        if acc >= least:
            ends.append(i)
            acc = 0.0
    last = len(ref_shares) - 1
    if not ends:
        return [last]
    if ends[-1] != last:
        ends[-1] = last
    return ends


def numeric_bins_test(grid: np.ndarray, ref_cdf: np.ndarray, s: np.ndarray,
                      n_ref: int) -> float:
    """Chi-square over the reference percentiles grouped into bins of about equal
    reference mass (at most ``MAX_TEST_BINS``, each expecting ``MIN_EXPECTED`` values in
    both samples). ``s`` is the sorted current values."""
    n = len(s)
    smaller = min(n, n_ref)
    if smaller < 2 * MIN_EXPECTED or not len(grid):
        return 1.0
    target = max(2, min(MAX_TEST_BINS, smaller // MIN_EXPECTED))
    # Bins (-inf, g0], (g0, g1], ..., (g_k, inf): the reference's shares come from its
    # distribution function at the grid, the sample's from counting.
    ref_shares = np.diff(np.concatenate(([0.0], ref_cdf, [1.0])))
    cur_le = np.searchsorted(s, grid, side="right")
    cur_counts = np.diff(np.concatenate(([0], cur_le, [n])))
    least = max(1.0 / target, MIN_EXPECTED / smaller) - 1e-9
    ends = merge_bins(ref_shares, least)
    if len(ends) < 2:
        return 1.0
    starts = [0, *[e + 1 for e in ends[:-1]]]
    ref_binned = np.add.reduceat(ref_shares, starts) * n_ref
    cur_binned = np.add.reduceat(cur_counts, starts)
    return chi2_pvalue(cur_binned, ref_binned)


# --- one feature ------------------------------------------------------------------------


@dataclass(slots=True)
class Measure:
    """What one feature's comparison found. ``tests`` are (name, p-value) pairs: "ks",
    "chi2", "missing"; empty unless tests were asked for."""

    psi: float
    ks: float | None = None
    js: float | None = None
    rows: int = 0
    valid: int = 0
    null_share: float = 0.0
    ref_null_share: float = 0.0
    tests: list[tuple[str, float]] = field(default_factory=list)


def _with_nulls(value_shares: np.ndarray, null_share: float) -> np.ndarray:
    return np.concatenate((value_shares * (1.0 - null_share), [null_share]))


def _missing_test(total: int, n: int, ref: dict[str, Any]) -> tuple[str, float]:
    ref_total = int(ref.get("count", 0))
    ref_nulls = round(ref_total * float(ref.get("null_fraction", 0.0)))
    return "missing", missing_pvalue(total - n, total, ref_nulls, ref_total)


def measure_numeric(ref: dict[str, Any], values: pl.Series | np.ndarray | Sequence[Any],
                    tests: bool = False) -> Measure:
    """PSI and KS of current ``values`` against a numeric reference, and with ``tests``
    the KS, chi-square and missing-share tests."""
    s, total = sorted_valid(as_float(values))
    n = len(s)
    if total == 0:
        return Measure(psi=0.0)
    ref_null = float(ref.get("null_fraction", 0.0))
    cur_null = (total - n) / total
    out = Measure(psi=0.0, rows=total, valid=n, null_share=cur_null, ref_null_share=ref_null)
    if tests:
        out.tests.append(_missing_test(total, n, ref))
    edges = np.asarray(ref.get("bin_edges", []), dtype=np.float64)
    ref_shares = np.asarray(ref.get("bin_fractions", [1.0]), dtype=np.float64)
    n_ref = round(ref.get("count", 0) * (1.0 - ref_null))
    if n == 0 or n_ref == 0 or len(edges) == 0:
        # Nothing to bin on one side: compare only how much is missing.
        out.psi = psi([1.0 - ref_null, ref_null], [1.0 - cur_null, cur_null])
        return out
    keep = len(edges) + 1
    limit = max_bins(n, n_ref)
    ref_cum = np.cumsum(ref_shares)[:-1]  # the reference share at or below each edge
    if keep > limit:
        # Keep the edges nearest to equal reference mass between them.
        m = len(edges)
        idx = np.unique([round((j + 1) * (m + 1) / limit) - 1 for j in range(limit - 1)])
        edges, ref_cum = edges[idx], ref_cum[idx]
    cur_le = np.searchsorted(s, edges, side="right")
    cur_shares = np.diff(np.concatenate(([0], cur_le, [n]))) / n
    ref_merged = np.diff(np.concatenate(([0.0], ref_cum, [1.0])))
    out.psi = psi(_with_nulls(ref_merged, ref_null), _with_nulls(cur_shares, cur_null))
    grid = np.asarray(ref.get("quantiles", []), dtype=np.float64)
    if len(grid):
        ref_cdf = np.asarray(ref["cdf"], dtype=np.float64)
        cur_cdf = np.searchsorted(s, grid, side="right") / n
        below = np.searchsorted(s, grid[0], side="left") / n  # F just below the reference min
        out.ks = max(ks(ref_cdf, cur_cdf), float(below))
        if tests:
            out.tests.append(("ks", ks_pvalue(out.ks, n, n_ref)))
            out.tests.append(("chi2", numeric_bins_test(grid, ref_cdf, s, n_ref)))
    return out


def _category_counts(values: pl.Series | Sequence[Any]) -> tuple[int, int, dict[str, int]]:
    s = values if isinstance(values, pl.Series) else pl.Series(list(values), strict=False)
    s = s.cast(pl.String, strict=False)
    total = len(s)
    n = total - s.null_count()
    counts: dict[str, int] = {}
    if n:
        counts = dict(zip(*category_counts(s), strict=True))  # any column name works
    return total, n, counts


def categories_test(fractions: dict[str, float], counts: dict[str, int], n: int,
                    n_ref: int) -> float:
    """Chi-square over the reference's categories that both samples expect at least
    ``MIN_EXPECTED`` times (the most common first, at most ``MAX_TEST_CATEGORIES``); the
    rest, unseen categories included, are one bin."""
    smaller = min(n, n_ref)
    if smaller < 2 * MIN_EXPECTED:
        return 1.0
    ranked = sorted(((f, c) for c, f in fractions.items() if c != OTHER), reverse=True)
    kept = [c for f, c in ranked if f * smaller >= MIN_EXPECTED][:MAX_TEST_CATEGORIES]
    ref_kept = np.array([fractions[c] for c in kept], dtype=np.float64)
    cur_kept = np.array([counts.get(c, 0) for c in kept], dtype=np.float64)
    rest_ref = max(0.0, 1.0 - float(ref_kept.sum()))
    ref_bins = list(ref_kept)
    cur_bins = list(cur_kept)
    if rest_ref * smaller >= MIN_EXPECTED or not kept:
        ref_bins.append(rest_ref)
        cur_bins.append(n - float(cur_kept.sum()))
    else:  # too rare to be a bin of its own: it joins the rarest kept category
        ref_bins[-1] += rest_ref
        cur_bins[-1] += n - float(cur_kept.sum())
    return chi2_pvalue(np.array(cur_bins), np.array(ref_bins) * n_ref)


def measure_categorical(ref: dict[str, Any], values: pl.Series | Sequence[Any],
                        tests: bool = False) -> Measure:
    """PSI and JS distance of current ``values`` against a categorical reference, and
    with ``tests`` the chi-square and missing-share tests."""
    total, n, counts = _category_counts(values)
    if total == 0:
        return Measure(psi=0.0, js=0.0)
    ref_null = float(ref.get("null_fraction", 0.0))
    cur_null = (total - n) / total
    fractions: dict[str, float] = ref.get("fractions", {})
    n_ref = round(ref.get("count", 0) * (1.0 - ref_null))
    # The most frequent categories, as many as the sample sizes support, each expected at
    # least MIN_EXPECTED times in both samples; the rest are one bin. Ranked by the pooled
    # count of both samples, which does not favour either side when nothing changed.
    smallest = MIN_EXPECTED / max(1, min(n, n_ref))
    named = sorted(((f * n_ref + counts.get(c, 0), c) for c, f in fractions.items()
                    if c != OTHER and f >= smallest), reverse=True)
    limit = max_bins(n, n_ref)
    kept = [c for _, c in named[: max(1, limit - 1)]]
    ref_kept = np.array([fractions[c] for c in kept])
    cur_kept = np.array([counts.get(c, 0) for c in kept], dtype=np.float64)
    ref_shares = np.append(ref_kept, max(0.0, 1.0 - ref_kept.sum()))
    cur_shares = np.append(cur_kept, n - cur_kept.sum()) / n if n else np.zeros(len(kept) + 1)
    r = _with_nulls(ref_shares, ref_null)
    c = _with_nulls(cur_shares, cur_null)
    out = Measure(psi=psi(r, c), js=js(r, c), rows=total, valid=n, null_share=cur_null,
                  ref_null_share=ref_null)
    if tests:
        out.tests.append(_missing_test(total, n, ref))
        if n and n_ref:
            out.tests.append(("chi2", categories_test(fractions, counts, n, n_ref)))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: p-values that keep the chance of any false finding
    among all of them under the level they are compared with."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
