"""Request windows: what the predict route does, counted in memory on the request path and
handed to the store in closed windows.

:class:`RequestMetrics` keeps per-pipeline counters (the current window, closed windows
waiting to be written, the last minute, running totals); :func:`instrument` wraps the ASGI
app so each predict call is timed and counted under its pipeline. A latency histogram of
fixed buckets (:data:`LATENCY_BOUNDS`) gives p50/p95/p99 by :func:`percentile`.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from appliance.api_types import MetricsWindow
from appliance.store import WindowRecord

# Upper bounds (seconds) of the latency histogram's buckets, about 25% apart from 0.1 ms
# to 10 s, then +Inf; fine enough for p50/p95/p99 by interpolation inside a bucket.
LATENCY_BOUNDS = tuple(ms / 1000 for ms in (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12.5, 15, 20,
    25, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1250,
    1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000,
))
N_BUCKETS = len(LATENCY_BOUNDS) + 1


class _Counts:
    __slots__ = ("buckets", "end", "errors_4xx", "errors_5xx", "latency_sum", "requests",
                 "rows", "start")

    def __init__(self, start: float, end: float = math.inf) -> None:
        self.start = start
        self.end = end
        self.requests = 0
        self.rows = 0
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.latency_sum = 0.0
        self.buckets = [0] * N_BUCKETS

    def add(self, other: _Counts | WindowRecord) -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.errors_4xx += other.errors_4xx
        self.errors_5xx += other.errors_5xx
        self.latency_sum += other.latency_sum
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def record(self, pipeline: str, seconds: float) -> WindowRecord:
        return WindowRecord(pipeline=pipeline, seconds=seconds, start=self.start,
                            requests=self.requests, rows=self.rows,
                            errors_4xx=self.errors_4xx, errors_5xx=self.errors_5xx,
                            latency_sum=self.latency_sum, buckets=list(self.buckets))


def percentile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram, in seconds, interpolated linearly
    inside its bucket; None when the histogram is empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            lo = LATENCY_BOUNDS[i - 1] if i > 0 else 0.0
            if i >= len(LATENCY_BOUNDS):
                return lo  # beyond the last bound: report the bound
            hi = LATENCY_BOUNDS[i]
            return lo + (hi - lo) * max(0.0, rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-1]


# The predict handler tells the middleware how many rows a request had through this
# holder, so a request costs one critical section, not two.
_REQUEST_ROWS: ContextVar[list[int] | None] = ContextVar("appliance_request_rows",
                                                         default=None)


class RequestMetrics:
    """Per-pipeline request counters: the current window, closed windows waiting to be
    written, the last minute, and running totals (for Prometheus).

    ``record`` is the request path: O(1), one uncontended lock held for a few
    increments of the current window. The lock makes a window that a flush takes final:
    no increment can land in it afterwards. Running totals are the closed windows' sums
    plus the open window, so the request path counts once.
    """

    def __init__(self, window_seconds: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = float(window_seconds)
        self.clock = clock
        self._lock = threading.Lock()
        self._current: dict[str, _Counts] = {}
        self._closed: list[WindowRecord] = []
        self._recent: dict[str, deque[_Counts]] = {}
        self._totals: dict[str, _Counts] = {}
        self._keep_recent = max(2, math.ceil(60 / self.window) + 1)
        self.started = clock()

    def _open(self, pipeline: str, now: float) -> _Counts:
        w = self._current.get(pipeline)
        if w is not None:
            self._close(pipeline, w)
        start = now - now % self.window
        w = self._current[pipeline] = _Counts(start, start + self.window)
        return w

    def _close(self, pipeline: str, w: _Counts) -> None:
        self._closed.append(w.record(pipeline, self.window))
        self._recent.setdefault(pipeline, deque(maxlen=self._keep_recent)).append(w)
        total = self._totals.get(pipeline)
        if total is None:
            total = self._totals[pipeline] = _Counts(0.0)
        total.add(w)
        if len(self._closed) > 100_000:  # the store has been failing for a long time
            del self._closed[: len(self._closed) - 100_000]

    def record(self, pipeline: str, status: int, seconds: float, rows: int = 0) -> None:
        """One finished request: its HTTP status, how long it took, the rows it had."""
        b = bisect.bisect_left(LATENCY_BOUNDS, seconds)
        with self._lock:
            now = self.clock()
            w = self._current.get(pipeline)
            if w is None or not w.start <= now < w.end:
                w = self._open(pipeline, now)
            w.requests += 1
            w.rows += rows
            if status >= 400:
                if status >= 500:
                    w.errors_5xx += 1
                else:
                    w.errors_4xx += 1
            w.latency_sum += seconds
            w.buckets[b] += 1

    def add_rows(self, pipeline: str, rows: int) -> None:
        """Rows predicted outside a counted request."""
        with self._lock:
            now = self.clock()
            w = self._current.get(pipeline)
            if w is None or not w.start <= now < w.end:
                w = self._open(pipeline, now)
            w.rows += rows

    def count_rows(self, pipeline: str, rows: int) -> None:
        """Called by the predict handler: the rows of the request being served."""
        holder = _REQUEST_ROWS.get()
        if holder is not None:
            holder[0] = rows
        else:
            self.add_rows(pipeline, rows)

    def take_closed(self, force: bool = False) -> list[WindowRecord]:
        """Closed windows not yet written (and, with ``force``, the open ones too)."""
        with self._lock:
            now = self.clock()
            for pipeline, w in list(self._current.items()):
                if force or w.end <= now:
                    self._close(pipeline, w)
                    del self._current[pipeline]
            out, self._closed = self._closed, []
            return out

    def give_back(self, windows: list[WindowRecord]) -> None:
        """Windows a failed write could not store, to try again at the next flush."""
        with self._lock:
            self._closed[:0] = windows

    def pending(self, pipeline: str) -> list[WindowRecord]:
        """Windows of a pipeline not in SQLite yet: closed ones and the open one."""
        with self._lock:
            out = [w for w in self._closed if w.pipeline == pipeline]
            w = self._current.get(pipeline)
            if w is not None:
                out.append(w.record(pipeline, self.window))
            return out

    def last(self, pipeline: str, seconds: float = 60.0) -> tuple[_Counts, float]:
        """Counts over the last ``seconds`` (whole windows), and the span they cover."""
        with self._lock:
            now = self.clock()
            total = _Counts(now - seconds)
            for w in (*self._recent.get(pipeline, ()), self._current.get(pipeline)):
                if w is not None and w.end > now - seconds:
                    total.add(w)
        return total, min(seconds, max(now - self.started, 1e-9))

    def totals(self) -> dict[str, _Counts]:
        """Everything counted since the process started, per pipeline."""
        with self._lock:
            out = {}
            for name in {*self._totals, *self._current}:
                c = _Counts(0.0)
                for part in (self._totals.get(name), self._current.get(name)):
                    if part is not None:
                        c.add(part)
                out[name] = c
            return out


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


PREDICT_PREFIX, PREDICT_SUFFIX = "/v1/pipelines/", "/predict"


def instrument(app: ASGIApp, metrics: RequestMetrics, known: Callable[[str], bool],
               resolve: Callable[[dict[str, Any]], str | None] | None = None) -> ASGIApp:
    """Wrap an ASGI app so that each predict call is timed and its status class and rows
    are counted under its pipeline. It sits outside the framework's own layers, so it
    sees every answer (400s of bodies that don't parse too) and adds one function call.
    Requests naming an unknown pipeline are not counted, so a client can't grow the label
    set. ``resolve`` names the pipeline of another prediction route's call (the Open
    Inference Protocol's infer, MLflow's /invocations), None for any other request."""
    clock = time.perf_counter
    record = metrics.record
    skip, cut = len(PREDICT_PREFIX), -len(PREDICT_SUFFIX)

    async def instrumented(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or not path.endswith(PREDICT_SUFFIX)
                or not path.startswith(PREDICT_PREFIX)):
            other = (resolve(scope) if resolve is not None and scope["type"] == "http"
                     else None)
            if other is None:
                await app(scope, receive, send)
                return
            path = PREDICT_PREFIX + other + PREDICT_SUFFIX  # counted as its pipeline's
        started = clock()
        status = 500
        rows = [0]
        token = _REQUEST_ROWS.set(rows)

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            _REQUEST_ROWS.reset(token)
            name = path[skip:cut]
            if "/" not in name and known(name):
                record(name, status, clock() - started, rows[0])

    instrumented.__wrapped__ = app  # type: ignore[attr-defined]
    return instrumented


# --- windows as the API shows them ------------------------------------------------------


def merge_records(a: WindowRecord | None, b: WindowRecord) -> WindowRecord:
    """A window as stored plus what of it is still pending in memory."""
    if a is None:
        return b
    return WindowRecord(
        pipeline=a.pipeline, seconds=a.seconds, start=a.start, requests=a.requests + b.requests,
        rows=a.rows + b.rows, errors_4xx=a.errors_4xx + b.errors_4xx,
        errors_5xx=a.errors_5xx + b.errors_5xx, latency_sum=a.latency_sum + b.latency_sum,
        buckets=[x + y for x, y in zip(a.buckets, b.buckets, strict=True)]
        if len(a.buckets) == len(b.buckets) else b.buckets,
    )


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def metrics_window(w: WindowRecord) -> MetricsWindow:
    """A window as the API shows it: counts and percentiles in milliseconds."""
    b = w.buckets if len(w.buckets) == N_BUCKETS else [0] * N_BUCKETS
    return MetricsWindow(
        start=w.start, seconds=w.seconds, requests=w.requests, rows=w.rows,
        errors_4xx=w.errors_4xx, errors_5xx=w.errors_5xx, p50_ms=_ms(percentile(b, 0.5)),
        p95_ms=_ms(percentile(b, 0.95)), p99_ms=_ms(percentile(b, 0.99)),
    )

