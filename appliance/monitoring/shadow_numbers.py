"""A shadow's numbers: its open window (counted by the worker), the totals as the API shows
them, and how two answers to one row are compared (agreement, score difference)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from appliance.monitoring.requests import N_BUCKETS
from appliance.store import ShadowWindowRecord, merge_shadow_windows

# Relative tolerance under which two regression answers agree.
REGRESSION_AGREEMENT = 0.05


def agree_and_diff(task: str, a: Any, b: Any) -> tuple[bool, float]:
    """Whether two answers to one row agree, and how far apart their scores are: binary,
    the same side of 0.5 and the probabilities' difference; multiclass, the same class and
    the largest difference of a class probability; regression, within 5% and the
    values' difference."""
    if task == "multiclass":
        pa, pb = a["probabilities"], b["probabilities"]
        diff = max(abs(pa[k] - pb.get(k, 0.0)) for k in pa)
        return a["class"] == b["class"], diff
    diff = abs(float(a) - float(b))
    if task == "binary":
        return (a >= 0.5) == (b >= 0.5), diff
    return diff <= REGRESSION_AGREEMENT * max(abs(float(a)), abs(float(b)), 1e-12), diff


class OpenWindow:
    __slots__ = ("agreed", "buckets", "diff_max", "diff_sum", "dropped", "errors",
                 "latency_sum", "prod_buckets", "prod_latency_sum", "requests", "rows",
                 "sampled", "scored", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.requests = self.sampled = self.scored = self.dropped = self.errors = 0
        self.rows = self.agreed = 0
        self.diff_sum = self.diff_max = self.latency_sum = self.prod_latency_sum = 0.0
        self.buckets = [0] * N_BUCKETS
        self.prod_buckets = [0] * N_BUCKETS

    def record(self, pipeline: str, version: int, seconds: float) -> ShadowWindowRecord:
        return ShadowWindowRecord(
            pipeline=pipeline, version=version, start=self.start, seconds=seconds,
            requests=self.requests, sampled=self.sampled, scored=self.scored,
            dropped=self.dropped, errors=self.errors, rows=self.rows, agreed=self.agreed,
            diff_sum=self.diff_sum, diff_max=self.diff_max, latency_sum=self.latency_sum,
            production_latency_sum=self.prod_latency_sum, buckets=list(self.buckets),
            production_buckets=list(self.prod_buckets))


@dataclass
class ShadowNumbers:
    """A shadow's numbers so far (stored windows and the open one)."""

    requests: int
    sampled: int
    scored: int
    dropped: int
    errors: int
    rows: int
    agreement: float | None
    mean_diff: float | None
    max_diff: float
    p50_ms: float | None
    p99_ms: float | None
    production_p50_ms: float | None
    production_p99_ms: float | None


def sum_windows(windows: list[ShadowWindowRecord]) -> ShadowWindowRecord | None:
    total = None
    for w in windows:
        total = w if total is None else merge_shadow_windows(total, w)
    return total


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def as_dict(n: ShadowNumbers) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in n.__dict__.items()}
