"""Health-gated rollout: for ``rollout.watch_seconds`` after any promotion (the gate's, a
shadow's, an operator's, an import's), the new version's error rate, p99 latency and (with
feedback) live performance are compared with the previous version's; a significant
worsening rolls back on its own (:meth:`~appliance.models.Production.roll_back`, event
``rolled_back`` naming the cause and its numbers).

Each test is one-sided, on counts, at ``rollout.z`` standard errors (the normal tail beyond
it: 0.13% at 3), so a single bad request never rolls back:

- **errors**: the new version's 5xx answers, ``e`` of ``n`` requests, against a binomial at
  the previous version's error rate over the ``watch_seconds`` before the promotion (at
  least :data:`ERROR_RATE_FLOOR`, so a previous version with no errors does not make one
  error significant): rolled back when ``P(X >= e) < tail(z)``.
- **latency**: the new version's requests slower than ``rollout.latency_ratio`` times the
  previous version's p99 and by at least ``rollout.latency_min_ms`` (the box's own load
  comes in bursts that slow every version alike), counted from the latency histogram
  (whole buckets above it), against a binomial at 1% (the share of the previous
  version's requests over its own p99). Judged once both have ``rollout.min_requests``.
- **performance**: with feedback on at least ``monitor.performance_min_labelled``
  predictions of each, the per-row loss (log loss; squared error for regression) of the
  new version's predictions since the promotion against the previous version's over the
  window before it, by Welch's z.

The watch is kept in SQLite (its counts at each check), so a restart resumes it for the
time it had left, with what it had counted: a version that crashed the daemon, or a box
rebooted in the middle, is still judged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from appliance.core import Settings
from appliance.models import Production
from appliance.monitoring.performance import score_pairs
from appliance.monitoring.requests import (
    LATENCY_BOUNDS,
    N_BUCKETS,
    RequestMetrics,
    _Counts,
    merge_records,
    percentile,
)
from appliance.store import RolloutWatchRecord, Store, WindowRecord

log = logging.getLogger("appliance.rollout")

# The least error rate a new version is compared with: a previous version with no errors
# in its window would otherwise make any error of the new one significant.
ERROR_RATE_FLOOR = 0.001
# The share of the previous version's requests above its own p99.
OVER_P99 = 0.01
EPS = 1e-15


@dataclass
class Watch:
    pipeline: str
    version: int
    previous: int
    promoted_at: float  # the clock's time (wall)
    until: float
    at_start: _Counts  # the pipeline's running totals at the promotion (or the resume)
    before: _Counts  # the previous version's requests over the window before it
    # The new version's requests counted before a restart (a resumed watch).
    carried: _Counts = field(default_factory=lambda: _Counts(0.0))
    resumed: bool = False


def _minus(a: _Counts, b: _Counts) -> _Counts:
    out = _Counts(b.end if math.isfinite(b.end) else 0.0)
    out.requests = a.requests - b.requests
    out.rows = a.rows - b.rows
    out.errors_4xx = a.errors_4xx - b.errors_4xx
    out.errors_5xx = a.errors_5xx - b.errors_5xx
    out.latency_sum = a.latency_sum - b.latency_sum
    out.buckets = [x - y for x, y in zip(a.buckets, b.buckets, strict=True)]
    return out


def _plus(a: _Counts, b: _Counts) -> _Counts:
    out = _Counts(0.0)
    out.add(a)
    out.add(b)
    return out


def _counts(records: list[WindowRecord]) -> _Counts:
    out = _Counts(0.0)
    for r in records:
        if len(r.buckets) == len(out.buckets):  # a window of other latency bounds is left out
            out.add(r)  # a stored window has the counts' fields
    return out


def _tail(z: float) -> float:
    return float(stats.norm.sf(z))


def _per_row_loss(task: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    if task == "regression":
        return (p - y) ** 2
    if task == "multiclass":
        yi = y.astype(np.int64)
        return -np.log(np.clip(p[np.arange(len(yi)), yi], EPS, 1.0))
    pc = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(pc) + (1 - y) * np.log(1 - pc))


class RolloutWatch:
    """The versions under watch after a promotion, one per pipeline, and their checks."""

    def __init__(self, store: Store, settings: Settings, requests: RequestMetrics,
                 production: Production, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.requests = requests
        self.production = production
        self.clock = clock
        self.watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        production.on_promoted.append(self.on_promoted)
        self._resume()

    def _resume(self) -> None:
        """The watches a stop, a crash or a power cut interrupted: each goes on for the time
        it had left at its last check, with the counts it had (a check then drops one whose
        version no longer serves)."""
        now = self.clock()
        for r in self.store.rollout_watches():
            if not len(r.after.buckets) == len(r.before.buckets) == N_BUCKETS:
                log.warning("rollout_not_resumed pipeline=%s version=%s reason=other latency "
                            "bounds", r.pipeline, r.version)
                self.store.end_rollout_watch(r.pipeline, r.version)
                continue
            carried = _counts([r.after])
            left = max(0.0, r.until - r.checked_at)
            self.watches[r.pipeline] = Watch(
                r.pipeline, r.version, r.previous, r.promoted_at, now + left,
                self.requests.totals().get(r.pipeline) or _Counts(0.0), _counts([r.before]),
                carried=carried, resumed=True)
            log.info("rollout_resumed pipeline=%s version=%s seconds_left=%.0f requests=%d",
                     r.pipeline, r.version, left, carried.requests)

    def save_all(self) -> None:
        """Keep every watch's counts as they are now (at a clean stop)."""
        with self._lock:
            for w in self.watches.values():
                self._save(w, self._after(w))

    def _save(self, w: Watch, after: _Counts) -> None:
        window = self.requests.window
        self.store.save_rollout_watch(RolloutWatchRecord(
            pipeline=w.pipeline, version=w.version, previous=w.previous,
            promoted_at=w.promoted_at, until=w.until, checked_at=self.clock(),
            before=w.before.record(w.pipeline, window),
            after=after.record(w.pipeline, window)))

    def _after(self, w: Watch) -> _Counts:
        """The new version's requests since the promotion."""
        now = _minus(self.requests.totals().get(w.pipeline) or _Counts(0.0), w.at_start)
        return _plus(w.carried, now)

    def on_promoted(self, pipeline: str, version: int, previous: int | None) -> None:
        cfg = self.settings.rollout
        with self._lock:
            ended = self.watches.pop(pipeline, None)
            if ended is not None:
                self.store.end_rollout_watch(pipeline, ended.version)
            if cfg.watch_seconds <= 0 or previous is None or previous == version:
                return
            now = self.clock()
            w = self.watches[pipeline] = Watch(
                pipeline, version, previous, now, now + cfg.watch_seconds,
                self.requests.totals().get(pipeline) or _Counts(0.0),
                self._before(pipeline, now - cfg.watch_seconds))
        self._save(w, _Counts(0.0))

    def _before(self, pipeline: str, since: float) -> _Counts:
        """The pipeline's requests since ``since``: stored windows and the pending ones."""
        window = self.requests.window
        since_w = since - since % window
        merged: dict[float, WindowRecord] = {w.start: w
                                             for w in self.store.windows(pipeline, since_w)}
        for w in self.requests.pending(pipeline):
            if w.start >= since_w:
                merged[w.start] = merge_records(merged.get(w.start), w)
        return _counts(list(merged.values()))

    def status(self, pipeline: str) -> str | None:
        """``watching v4 against v3 for 412 s more (1,203 requests, 0 errors)``."""
        w = self.watches.get(pipeline)
        if w is None:
            return None
        since = self._after(w)
        left = max(0.0, w.until - self.clock())
        resumed = "resumed after a restart; " if w.resumed else ""
        return (f"watching v{w.version} against v{w.previous} for {left:.0f} s more "
                f"({resumed}{since.requests:,} requests, {since.errors_5xx:,} errors)")

    def check_all(self) -> None:
        for pipeline in sorted(self.watches):
            try:
                self.check(pipeline)
            except Exception:
                log.exception("rollout_check_failed pipeline=%s", pipeline)

    def check(self, pipeline: str) -> str | None:
        """Judge the version under watch: the cause when it was rolled back, else None."""
        with self._lock:
            w = self.watches.get(pipeline)
        if w is None:
            return None
        serving = self.production.live.get(pipeline)
        if serving is None or serving.version != w.version:
            self._drop(w)
            return None
        found = self._judge(w)
        if found is not None:
            cause, why, numbers = found
            self._drop(w)
            if self.production.roll_back(pipeline, w.version, w.previous, cause, why,
                                         **numbers):
                return cause
            return None
        if self.clock() >= w.until:
            log.info("rollout_passed pipeline=%s version=%s", pipeline, w.version)
            self._drop(w)
        else:
            with self._lock:
                if self.watches.get(pipeline) is w:
                    self._save(w, self._after(w))
        return None

    def _drop(self, w: Watch) -> None:
        with self._lock:
            if self.watches.get(w.pipeline) is w:
                del self.watches[w.pipeline]
                self.store.end_rollout_watch(w.pipeline, w.version)

    def _judge(self, w: Watch) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.settings.rollout
        alpha = _tail(cfg.z)
        after = self._after(w)
        before = w.before
        n1 = after.requests
        if n1 >= cfg.min_requests:
            e1 = after.errors_5xx
            n0, e0 = before.requests, before.errors_5xx
            p0 = max(e0 / n0 if n0 else 0.0, ERROR_RATE_FLOOR)
            p_value = float(stats.binom.sf(e1 - 1, n1, p0)) if e1 > 0 else 1.0
            if p_value < alpha:
                return "errors", (
                    f"failed on {e1:,} of its {n1:,} requests ({e1 / n1:.2%}) against "
                    f"{e0:,} of {n0:,} ({e0 / n0 if n0 else 0:.2%}) for v{w.previous} before "
                    f"it: significantly more errors (p = {p_value:.2g}, needs < {alpha:.2g}, "
                    f"rollout.z = {cfg.z:g})"), {
                    "errors": e1, "requests": n1, "previous_errors": e0,
                    "previous_requests": n0, "p_value": p_value}
            if before.requests >= cfg.min_requests:
                p99_old = percentile(before.buckets, 0.99)
                p99_new = percentile(after.buckets, 0.99)
                if p99_old is not None and p99_new is not None:
                    limit = max(p99_old * cfg.latency_ratio,
                                p99_old + cfg.latency_min_ms / 1000)
                    first = next((i + 1 for i, b in enumerate(LATENCY_BOUNDS) if b >= limit),
                                 len(LATENCY_BOUNDS))
                    slow = sum(after.buckets[first:])
                    p_value = (float(stats.binom.sf(slow - 1, n1, OVER_P99))
                               if slow > 0 else 1.0)
                    if p_value < alpha:
                        return "latency", (
                            f"answered {slow:,} of its {n1:,} requests slower than "
                            f"{limit * 1000:.2f} ms ({cfg.latency_ratio:g}x v{w.previous}'s "
                            f"p99, and at least {cfg.latency_min_ms:g} ms over it): p99 "
                            f"{p99_new * 1000:.2f} ms vs "
                            f"{p99_old * 1000:.2f} ms, significantly slower (p = "
                            f"{p_value:.2g}, needs < {alpha:.2g})"), {
                            "p99_ms": p99_new * 1000, "previous_p99_ms": p99_old * 1000,
                            "slow": slow, "requests": n1, "p_value": p_value}
        return self._performance(w)

    def _performance(self, w: Watch) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.settings.rollout
        need = self.settings.monitor.performance_min_labelled
        since = w.promoted_at - cfg.watch_seconds
        joined = self.store.feedback_joined(w.pipeline, since)
        new = [(o, y) for _, ts, v, o, y in joined if v == w.version and ts >= w.promoted_at]
        old = [(o, y) for _, ts, v, o, y in joined if v == w.previous and ts < w.promoted_at]
        if len(new) < need or len(old) < need:
            return None
        serving = self.production.live.get(w.pipeline)
        if serving is None:
            return None
        task, classes = serving.spec.task, serving.spec.classes
        a, b = score_pairs(task, classes, new), score_pairs(task, classes, old)
        if a is None or b is None or len(a[0]) < need or len(b[0]) < need:
            return None
        la, lb = _per_row_loss(task, *a), _per_row_loss(task, *b)
        se = math.sqrt(la.var(ddof=1) / len(la) + lb.var(ddof=1) / len(lb))
        if se <= 0:
            return None
        z = float((la.mean() - lb.mean()) / se)
        if z > cfg.z:
            name = "squared error" if task == "regression" else "log loss"
            return "performance", (
                f"did worse on live feedback: mean {name} {la.mean():.4f} on {len(la):,} "
                f"labelled predictions vs {lb.mean():.4f} on {len(lb):,} of v{w.previous} "
                f"before it ({z:.1f} SE, needs > {cfg.z:g})"), {
                "loss": float(la.mean()), "previous_loss": float(lb.mean()),
                "labelled": len(la), "previous_labelled": len(lb), "z": z}
        return None
