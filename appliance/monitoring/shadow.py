"""Shadow scoring: a candidate (``promotion.policy = "shadow"``) scores a sampled share of live
requests beside production, off the request path, and is promoted or rejected once enough of
its predictions have feedback.

The request path (:meth:`Shadow.take`, :meth:`Shadow.offer`) pays a dictionary lookup when
no shadow runs; with one, a random draw per request and, for a sampled request, an append
to a bounded queue (rows counted; when full the request is dropped from shadowing and
counted, never waited for). One worker thread at a lower CPU priority predicts with the
candidate, compares with production's answers (agreement, score differences, both
latencies: the CPU time of each one's prediction, feature store work included, so that a
worker waiting for a core does not make a model look slow), counts its errors (what the
candidate raises never reaches a caller: the caller was answered before), and keeps its
outputs by prediction id. Its numbers are kept per ``shadow.window_seconds`` in SQLite
(``shadow_windows``).

:meth:`ShadowScoring.check` decides: once the shadow has scored ``shadow.min_requests``
requests and ``shadow.min_labelled`` of its predictions have feedback (joined through the
prediction ids, as live performance does), both versions are scored on those same rows
with the gate's metric and paired standard error, and the candidate is promoted unless it
is significantly worse by the gate's rule (``train.regression_z``,
:func:`~appliance.models.metrics.significant_loss`), or rejected, with the numbers in its
decision and the event. A shadow that fails on more than ``shadow.max_error_rate`` of the
requests it scored is rejected without waiting for labels.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from appliance.core import ApplianceError, Settings, lower_thread_priority
from appliance.features import FeatureStore
from appliance.models import LiveModels, LoadedModel, Production, Registry
from appliance.models import metrics as m
from appliance.monitoring.performance import score_pairs
from appliance.monitoring.requests import LATENCY_BOUNDS, N_BUCKETS, percentile
from appliance.monitoring.shadow_numbers import (
    OpenWindow,
    ShadowNumbers,
    agree_and_diff,
    as_dict,
    ms,
    sum_windows,
)
from appliance.store import Events, ShadowWindowRecord, Store, merge_shadow_windows

log = logging.getLogger("appliance.shadow")

_encode = msgspec.json.Encoder().encode

# Outputs kept by prediction id per shadow at most (for the join with feedback); beyond it
# the shadow keeps scoring (agreement, latency, errors) but stores no more outputs.
MAX_OUTPUTS = 200_000
# Queued requests the worker takes at once, and how often it writes what it counted.
WORKER_BATCH = 4
# The share of the time the worker may work (and so hold the GIL the event loop needs).
WORKER_DUTY = 0.25
FLUSH_SECONDS = 1.0


class Shadow:
    """One candidate shadowing one pipeline's production model."""

    def __init__(self, scoring: ShadowScoring, model: LoadedModel,
                 production_version: int) -> None:
        self.scoring = scoring
        self.pipeline = model.pipeline
        self.version = model.version
        self.model = model
        self.production_version = production_version
        self.task = model.spec.task
        # Counted on the request path (the event loop's thread): requests seen, sampled.
        self.requests = 0
        self.sampled = 0
        self.dropped = 0
        self._random = random.Random(os.urandom(8)).random
        self._counted = (0, 0, 0)  # (requests, sampled, dropped) in windows closed so far
        self.outputs_kept = 0
        self.errors_seen: list[str] = []  # the first few errors, for the decision

    # --- the request path ----------------------------------------------------------------

    def take(self) -> bool:
        """Count a live request; whether it is sampled for the shadow."""
        self.requests += 1
        rate = self.scoring.settings.shadow.sample_rate  # read per call: SIGHUP may change it
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def offer(self, rows: list[Any], outputs: list[Any], ids: list[str],
              production_seconds: float) -> None:
        """Queue a sampled request's rows with production's answers (never waits)."""
        self.sampled += 1
        self.scoring.enqueue(self, rows, outputs, ids, production_seconds)


# (shadow, rows, production's outputs, prediction ids, production's seconds, time)
_Entry = tuple[Shadow, list[Any], list[Any], list[str], float, float]


class ShadowScoring:
    """Every pipeline's shadow (at most one each), the worker that scores them, and the
    decisions. :meth:`start_shadow` is the policy's way in
    (:class:`~appliance.models.ShadowStarter`)."""

    def __init__(self, store: Store, settings: Settings, events: Events, live: LiveModels,
                 production: Production, registry: Registry,
                 features: FeatureStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.events = events
        self.live = live
        self.production = production
        self.registry = registry
        self.features = features
        self.clock = clock
        # Read on the request path: replaced whole, never changed in place.
        self.active: dict[str, Shadow] = {}
        self._lock = threading.Lock()  # the queue, the open windows, the pending outputs
        self._decide_lock = threading.Lock()
        self._queue: deque[_Entry] = deque()
        self._queued_rows = 0
        self._arrived = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._windows: dict[tuple[str, int], OpenWindow] = {}
        self._closed: list[ShadowWindowRecord] = []
        self._outputs: list[tuple[str, int, str, float, str]] = []
        self._idle = threading.Condition(self._lock)
        self._busy = False
        production.on_promoted.append(self._promoted)

    # --- starting, resuming, stopping ------------------------------------------------------

    def start_shadow(self, pipeline: str, version: int) -> str:
        """Shadow ``version`` beside the pipeline's production model (a newer candidate
        replaces an older shadow, which is rejected as superseded)."""
        serving = self.live.get(pipeline)
        if serving is None:
            raise ApplianceError("no_production", f"`{pipeline}` has no production model to "
                                 "shadow", {"pipeline": pipeline}, status=409)
        model = self.registry.load(pipeline, version)
        if (model.spec.task != serving.spec.task
                or list(model.spec.classes or []) != list(serving.spec.classes or [])):
            raise ApplianceError(
                "not_comparable", f"v{version} ({model.spec.task}, classes "
                f"{model.spec.classes}) and production v{serving.version} "
                f"({serving.spec.task}, classes {serving.spec.classes}) don't answer the same "
                "question", {"pipeline": pipeline, "version": version}, status=409)
        if self.live.max_string_chars is not None:
            model.encoder.max_string_chars = self.live.max_string_chars
        old = self.active.get(pipeline)
        if old is not None and old.version != version:
            why = f"superseded by v{version}, a newer candidate, before it was decided"
            self._end(old, "superseded", why, {})
            self.registry.reject(pipeline, old.version, why)
            self.events.emit("not_promoted", f"v{old.version}: {why}", pipeline=pipeline,
                             version=old.version)
        self.store.start_shadow(pipeline, version, serving.version, self.clock())
        self.active = {**self.active, pipeline: Shadow(self, model, serving.version)}
        self.start()
        cfg = self.settings.shadow
        return (f"shadowing production v{serving.version} on {cfg.sample_rate:.0%} of live "
                f"requests (promotion.policy = shadow): decided after {cfg.min_requests} "
                f"scored requests and {cfg.min_labelled} with feedback")

    def resume(self) -> None:
        """At start: the shadows that were running run again (their stored windows count)."""
        for record in self.store.shadows(state="shadowing"):
            serving = self.live.get(record.pipeline)
            model_record = self.store.model(record.pipeline, record.version)
            if serving is None or model_record is None or model_record.stage != "candidate":
                continue
            try:
                model = self.registry.load(record.pipeline, record.version)
            except ApplianceError as err:
                log.error("shadow_not_resumed pipeline=%s version=%s error=%s",
                          record.pipeline, record.version, err.message)
                continue
            shadow = Shadow(self, model, serving.version)
            stored = self.store.shadow_windows(record.pipeline, record.version)
            total = sum_windows(stored)
            if total is not None:
                shadow.requests, shadow.sampled = total.requests, total.sampled
                shadow.dropped = total.dropped
                shadow._counted = (total.requests, total.sampled, total.dropped)
            shadow.outputs_kept = self.store.count_shadow_outputs(record.pipeline,
                                                                  record.version)
            self.active = {**self.active, record.pipeline: shadow}
        if self.active:
            self.start()

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (what is queued is dropped: it is a sample) and write the numbers."""
        with self._lock:
            self._stop = True
        self._arrived.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush(force=True)

    def forget(self, pipeline: str) -> None:
        """The pipeline is deleted: its shadow stops, nothing of it is written again."""
        self.active = {k: v for k, v in self.active.items() if k != pipeline}
        with self._lock:
            for key in [k for k in self._windows if k[0] == pipeline]:
                del self._windows[key]
            self._closed = [w for w in self._closed if w.pipeline != pipeline]
            self._outputs = [o for o in self._outputs if o[0] != pipeline]

    def _promoted(self, pipeline: str, version: int, previous: int | None) -> None:
        """Production changed: a shadow promoted by an operator ends; one that shadows on
        compares with the new production version from now on."""
        shadow = self.active.get(pipeline)
        if shadow is None:
            return
        if shadow.version == version:
            if self.store.shadow(pipeline, version) is not None:
                self._end(shadow, "promoted", "promoted while shadowing (by an operator or "
                          "an import)", {})
            return
        shadow.production_version = version
        self.store.start_shadow(pipeline, shadow.version, version, self.clock())

    # --- the request path ----------------------------------------------------------------

    def enqueue(self, shadow: Shadow, rows: list[Any], outputs: list[Any], ids: list[str],
                production_seconds: float) -> None:
        n = len(rows)
        with self._lock:
            if self._queued_rows + n > self.settings.shadow.queue_max or self._stop:
                shadow.dropped += 1
                return
            self._queued_rows += n
            first = not self._queue
            self._queue.append((shadow, rows, outputs, ids, production_seconds, self.clock()))
        if first:
            self._arrived.set()

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        # The shadow is worth less than the answers: a lower CPU priority, so the event loop
        # wins the cores under load.
        lower_thread_priority()
        last_flush = time.monotonic()
        while True:
            self._arrived.wait(1.0)
            self._arrived.clear()
            while True:
                with self._lock:
                    if self._stop:
                        return
                    if not self._queue:
                        self._busy = False
                        self._idle.notify_all()
                        break
                    batch = [self._queue.popleft()
                             for _ in range(min(WORKER_BATCH, len(self._queue)))]
                    self._queued_rows -= sum(len(e[1]) for e in batch)
                    self._busy = True
                began = time.perf_counter()
                for entry in batch:
                    try:
                        self._score(entry)
                    except Exception:  # never stops the worker
                        log.exception("shadow_scoring_failed")
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    last_flush = self._flush_quietly()
                # Answers come first: the worker holds the GIL (which the event loop needs)
                # at most WORKER_DUTY of the time; beyond, its queue fills and drops.
                worked = time.perf_counter() - began
                time.sleep(min(worked * (1 / WORKER_DUTY - 1), 0.05))
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = self._flush_quietly()

    def _flush_quietly(self) -> float:
        try:
            self.flush()
        except Exception:
            log.exception("shadow_flush_failed")
        return time.monotonic()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and nothing is being scored (for tests, tools)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _score(self, entry: _Entry) -> None:
        shadow, rows, outputs, ids, production_seconds, ts = entry
        if self.active.get(shadow.pipeline) is not shadow:
            return  # decided (or replaced) meanwhile
        model = shadow.model
        error: str | None = None
        started = time.thread_time()  # CPU time: a preempted worker is not a slow model
        try:
            spec = model.spec
            if spec.joins or spec.derived:
                if self.features is None:
                    raise ApplianceError("no_feature_store", "the feature store is not set up")
                rows = self.features.prepare_rows(
                    spec, rows, self.settings.pipeline(shadow.pipeline).missing_key,
                    model.derivation)
            answers = model.predict_rows(rows)
        except Exception as exc:  # the candidate's failure is its own, never a caller's
            answers = None
            error = (getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")[:300]
        seconds = time.thread_time() - started
        agreed = 0
        diff_sum = diff_max = 0.0
        kept: list[tuple[str, int, str, float, str]] = []
        if answers is not None:
            for _pid, a, b in zip(ids, answers, outputs, strict=True):
                same, diff = agree_and_diff(shadow.task, a, b)
                agreed += same
                diff_sum += diff
                diff_max = max(diff_max, diff)
            if shadow.outputs_kept < MAX_OUTPUTS:
                kept = [(shadow.pipeline, shadow.version, pid,
                         ts, repr(a) if type(a) is float else _encode(a).decode())
                        for pid, a in zip(ids, answers, strict=True)]
                shadow.outputs_kept += len(kept)
        elif len(shadow.errors_seen) < 3:
            shadow.errors_seen.append(error or "")
        window_s = self.settings.shadow.window_seconds
        with self._lock:
            w = self._window(shadow, ts, window_s)
            if answers is None:
                w.errors += 1
            else:
                w.scored += 1
                w.rows += len(answers)
                w.agreed += agreed
                w.diff_sum += diff_sum
                w.diff_max = max(w.diff_max, diff_max)
                w.latency_sum += seconds
                w.buckets[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
            w.prod_latency_sum += production_seconds
            w.prod_buckets[bisect.bisect_left(LATENCY_BOUNDS, production_seconds)] += 1
            self._outputs.extend(kept)

    def _window(self, shadow: Shadow, ts: float, seconds: float) -> OpenWindow:
        """The open window of a shadow (lock held); one that ended is closed first, with the
        request path's counts since the last one."""
        key = (shadow.pipeline, shadow.version)
        w = self._windows.get(key)
        if w is not None and ts >= w.start + seconds:
            self._close(shadow, w, seconds)
            w = None
        if w is None:
            w = self._windows[key] = OpenWindow(ts - ts % seconds)
        return w

    def _close(self, shadow: Shadow, w: OpenWindow, seconds: float) -> None:
        # The request path's counters are cumulative; a window holds what came since the
        # previous one closed.
        now = (shadow.requests, shadow.sampled, shadow.dropped)
        w.requests, w.sampled, w.dropped = (
            a - b for a, b in zip(now, shadow._counted, strict=True))
        shadow._counted = now
        self._closed.append(w.record(shadow.pipeline, shadow.version, seconds))
        del self._windows[(shadow.pipeline, shadow.version)]

    def flush(self, force: bool = False) -> None:
        """Write the closed windows (with ``force``, the open ones too) and the outputs."""
        seconds = self.settings.shadow.window_seconds
        now = self.clock()
        with self._lock:
            for (pipeline, _version), w in list(self._windows.items()):
                shadow = self.active.get(pipeline)
                if shadow is None or shadow.version != _version:
                    del self._windows[(pipeline, _version)]
                    continue
                if force or now >= w.start + seconds:
                    self._close(shadow, w, seconds)
            closed, self._closed = self._closed, []
            outputs, self._outputs = self._outputs, []
        try:
            self.store.insert_shadow_outputs(outputs)
            self.store.add_shadow_windows(closed)
        except Exception:
            with self._lock:
                self._closed[:0] = closed
                self._outputs[:0] = outputs
            raise

    # --- the numbers and the decision ----------------------------------------------------

    def numbers(self, pipeline: str, version: int) -> ShadowNumbers | None:
        """A shadow's numbers so far: the stored windows, and the open one when it runs."""
        total = sum_windows(self.store.shadow_windows(pipeline, version))
        shadow = self.active.get(pipeline)
        if shadow is not None and shadow.version == version:
            with self._lock:
                w = self._windows.get((pipeline, version))
                pending = [c for c in self._closed if c.pipeline == pipeline
                           and c.version == version]
                open_part = (w.record(pipeline, version, self.settings.shadow.window_seconds)
                             if w is not None else None)
            for part in (*pending, *([open_part] if open_part else [])):
                total = part if total is None else merge_shadow_windows(total, part)
            if total is None:
                total = ShadowWindowRecord(pipeline=pipeline, version=version, start=0.0,
                                           seconds=0.0, buckets=[0] * N_BUCKETS,
                                           production_buckets=[0] * N_BUCKETS)
            # The request path's counters are exact and cumulative (since start or resume).
            total.requests, total.sampled = shadow.requests, shadow.sampled
            total.dropped = shadow.dropped
        if total is None:
            return None
        return ShadowNumbers(
            requests=total.requests, sampled=total.sampled, scored=total.scored,
            dropped=total.dropped, errors=total.errors, rows=total.rows,
            agreement=total.agreed / total.rows if total.rows else None,
            mean_diff=total.diff_sum / total.rows if total.rows else None,
            max_diff=total.diff_max, p50_ms=ms(percentile(total.buckets, 0.5)),
            p99_ms=ms(percentile(total.buckets, 0.99)),
            production_p50_ms=ms(percentile(total.production_buckets, 0.5)),
            production_p99_ms=ms(percentile(total.production_buckets, 0.99)))

    def state_line(self, pipeline: str, version: int) -> str | None:
        """``shadowing 340 of 1,000 requests, agreement 97.2%`` (None: not a shadow now)."""
        shadow = self.active.get(pipeline)
        if shadow is None or shadow.version != version:
            return None
        n = self.numbers(pipeline, version)
        if n is None:
            return None
        cfg = self.settings.shadow
        line = f"shadowing {n.scored:,} of {cfg.min_requests:,} requests"
        if n.agreement is not None:
            line += f", agreement {n.agreement:.1%}"
        labelled = self._labelled(shadow)
        line += f", {labelled:,} of {cfg.min_labelled:,} with feedback"
        if n.errors:
            line += f", {n.errors:,} errors"
        return line

    def _labelled(self, shadow: Shadow) -> int:
        return self.store.count_shadow_feedback(shadow.pipeline, shadow.version,
                                                shadow.production_version)

    def check_all(self) -> None:
        for pipeline in sorted(self.active):
            try:
                self.check(pipeline)
            except Exception:
                log.exception("shadow_check_failed pipeline=%s", pipeline)

    def check(self, pipeline: str) -> str | None:
        """Decide the pipeline's shadow when it has enough numbers: returns ``promoted`` or
        ``rejected``, or None while it waits."""
        with self._decide_lock:
            shadow = self.active.get(pipeline)
            if shadow is None:
                return None
            self.flush()
            return self._decide(shadow)

    def _decide(self, shadow: Shadow) -> str | None:
        cfg = self.settings.shadow
        n = self.numbers(shadow.pipeline, shadow.version)
        if n is None:
            return None
        answered = n.scored + n.errors
        summary = self._summary(n)
        if answered >= cfg.min_requests and n.errors > cfg.max_error_rate * answered:
            first = f" (first: {shadow.errors_seen[0]})" if shadow.errors_seen else ""
            why = (f"rejected by its shadow: it failed on {n.errors:,} of the {answered:,} "
                   f"requests it scored ({n.errors / answered:.1%}; shadow.max_error_rate = "
                   f"{cfg.max_error_rate:g}){first}; {summary}")
            return self._reject(shadow, why, {**as_dict(n)})
        if n.scored < cfg.min_requests:
            return None
        rows = [r for r in self.store.shadow_feedback(shadow.pipeline, shadow.version)
                if r[1] == shadow.production_version]
        if len(rows) < cfg.min_labelled:
            return None
        serving = self.live.get(shadow.pipeline)
        if serving is None:
            return None
        if serving.version != shadow.production_version:
            # Production changed without a promotion (a rollback): compare with it from now.
            self._promoted(shadow.pipeline, serving.version, shadow.production_version)
            return None
        task = shadow.task
        classes = shadow.model.spec.classes
        prod = score_pairs(task, classes, [(r[2], r[4]) for r in rows])
        cand = score_pairs(task, classes, [(r[3], r[4]) for r in rows])
        if (prod is None or cand is None or len(prod[0]) != len(cand[0])
                or not np.array_equal(prod[0], cand[0])):
            return None
        y, p_prod = prod
        p_cand = cand[1]
        metric = m.primary_metric(task, self.settings.pipeline(shadow.pipeline).train.metric)
        c = m.compare(task, metric, y, p_cand, p_prod)
        if not (math.isfinite(c.challenger) and math.isfinite(c.reference)):
            return None  # e.g. an AUC on rows of one class: wait for more feedback
        z = self.settings.train.regression_z
        worse, text = m.significant_loss(c, z)
        numbers = {**as_dict(n), "labelled": len(y), "metric": metric,
                   "shadow_value": c.challenger, "production_value": c.reference,
                   "gain": c.gain, "standard_error": c.se,
                   "z": m.standard_errors(c), "z_required": z}
        verdict = (f"its shadow of production v{shadow.production_version} on "
                   f"{len(y):,} labelled live rows: {text}; {summary}")
        if worse:
            return self._reject(shadow, f"rejected by its shadow: {verdict}", numbers)
        reason = f"promoted by its shadow (not worse): {verdict}"
        self._end(shadow, "promoted", reason, numbers)
        try:
            self.production.promote(shadow.pipeline, shadow.version, reason,
                                    gate={"shadow": numbers})
        except ApplianceError as err:
            self.registry.reject(shadow.pipeline, shadow.version,
                                 f"not loadable: {err.message}")
            return "rejected"
        return "promoted"

    def _summary(self, n: ShadowNumbers) -> str:
        parts = [f"{n.scored:,} requests scored of {n.requests:,} seen"]
        if n.agreement is not None:
            parts.append(f"agreement {n.agreement:.1%}")
        if n.mean_diff is not None:
            parts.append(f"mean score difference {n.mean_diff:.4f}")
        if n.p99_ms is not None and n.production_p99_ms is not None:
            parts.append(f"p99 {n.p99_ms:.2f} ms vs production's {n.production_p99_ms:.2f} ms")
        parts.append(f"{n.errors:,} errors")
        return ", ".join(parts)

    def _reject(self, shadow: Shadow, why: str, numbers: dict[str, Any]) -> str:
        self._end(shadow, "rejected", why, numbers)
        self.registry.reject(shadow.pipeline, shadow.version, why)
        self.events.emit("not_promoted", f"v{shadow.version}: {why}", pipeline=shadow.pipeline,
                         version=shadow.version, shadow=numbers)
        return "rejected"

    def _end(self, shadow: Shadow, state: str, why: str, numbers: dict[str, Any]) -> None:
        """Stop a shadow: the request path stops sampling for it at once, its numbers are
        written, and its decision kept."""
        if self.active.get(shadow.pipeline) is shadow:
            self.active = {k: v for k, v in self.active.items() if k != shadow.pipeline}
        with self._lock:
            w = self._windows.get((shadow.pipeline, shadow.version))
            if w is not None:
                self._close(shadow, w, self.settings.shadow.window_seconds)
        try:
            self.flush()
        except Exception:
            log.exception("shadow_flush_failed")
        self.store.end_shadow(shadow.pipeline, shadow.version, state, why, numbers,
                              self.clock())
