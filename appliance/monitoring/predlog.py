"""The prediction log: every prediction's id, time, model version and output, and a sample
of the inputs (for drift), written to SQLite off the request path.

A request only appends one entry to a bounded in-memory queue (a lock and an append);
one writer thread turns entries into rows and writes them in batches through
``Store.insert_predictions``. An entry keeps the ids and outputs, and of the rows sampled
for their inputs only the model's inputs, encoded as JSON when the request is answered: the
request's own objects (fields the model ignores, rows not sampled) are never kept. When the
queue holds ``max_pending`` predictions or ``max_pending_bytes`` bytes, new ones are dropped
and counted, never waited for: serving is worth more than its log. The counts are in
``GET /v1/pipelines/{name}`` and drops are logged. ``close()`` writes what is left.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.api_types import PredictionLogInfo
from appliance.core import lower_thread_priority
from appliance.core.logs import event as log_event
from appliance.store import Store

log = logging.getLogger("appliance.predlog")

_encode = msgspec.json.Encoder().encode

# Rows per write transaction: short, so the store's lock is never held long.
WRITE_BATCH_ROWS = 1000
# Seconds between two "dropped" warnings in the log.
DROP_WARNING_EVERY = 10.0
# What a queued prediction holds besides its sampled inputs (its id, its output, its share of
# the entry), in bytes, on the high side, and per class of a multiclass output (the class's
# probability in a dict): the queue's byte bound counts these and the inputs' exact length.
PREDICTION_BYTES = 160
CLASS_BYTES = 120
# A Python bytes object's own size beside its content.
BYTES_OVERHEAD = 33


class PredictionIds:
    """Unique prediction ids, cheaply: a random per-process prefix and a counter.

    48 random bits make two processes' ids collide with negligible odds; the counter makes
    ids within one process unique and ordered. About 0.1 us an id.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def take(self, n: int) -> list[str]:
        p = self._prefix
        nxt = self._counter.__next__  # one C call per id; thread-safe under the GIL
        return [f"{p}{nxt():08x}" for _ in range(n)]


@dataclass
class _Counts:
    logged: int = 0
    dropped: int = 0
    failed: int = 0


# (pipeline, model version, time, ids, outputs, sampled inputs as JSON by row (None: none
# sampled), bytes counted for it)
_Entry = tuple[str, int, float, Sequence[str], Sequence[Any], list[bytes | None] | None, int]


class PredictionLog:
    def __init__(self, store: Store, *, sample_rate: float, max_pending: int,
                 flush_seconds: float, max_pending_bytes: int = 64 << 20) -> None:
        self.store = store
        self.sample_rate = sample_rate
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.flush_seconds = flush_seconds
        self._entries: deque[_Entry] = deque()
        self._pending = 0
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._arrived = threading.Event()  # the queue went from empty to not empty
        self._stop = False
        self._thread: threading.Thread | None = None
        self._counts: dict[str, _Counts] = {}
        self._warned_at = 0.0
        self._warned_dropped = 0
        self._random = random.Random(os.urandom(8))

    # --- the request path ----------------------------------------------------------------

    def record(self, pipeline: str, version: int, ids: Sequence[str], outputs: Sequence[Any],
               rows: Sequence[Any], features: Sequence[str]) -> bool:
        """Queue one request's predictions; False when they were dropped (queue full).

        Of ``rows`` only the sampled rows' ``features`` are kept, encoded here; nothing
        else of the request outlives the call."""
        n = len(ids)
        if self._pending + n > self.max_pending or self._stop:  # full: no sampling work
            with self._lock:
                self._counts.setdefault(pipeline, _Counts()).dropped += n
            return False
        size = n * PREDICTION_BYTES
        if n and type(outputs[0]) is dict:  # multiclass: a probability per class
            size += n * CLASS_BYTES * len(outputs[0].get("probabilities") or ())
        inputs = self._sample(rows, features) if self.sample_rate > 0.0 else None
        if inputs is not None:
            size += sum(len(t) + BYTES_OVERHEAD for t in inputs if t is not None)
        with self._lock:
            counts = self._counts.get(pipeline)
            if counts is None:
                counts = self._counts[pipeline] = _Counts()
            if (self._pending + n > self.max_pending or self._stop
                    or self._pending_bytes + size > self.max_pending_bytes):
                counts.dropped += n
                return False
            self._pending += n
            self._pending_bytes += size
            first = not self._entries
            self._entries.append((pipeline, version, time.time(), ids, outputs, inputs, size))
        if first:
            self._arrived.set()  # wakes the idle writer (once per batch, not per request)
        return True

    def _sample(self, rows: Sequence[Any], features: Sequence[str]) -> list[bytes | None] | None:
        """The model's inputs of the rows drawn for the log, as JSON; None if none was."""
        rate = self.sample_rate
        rnd = self._random.random
        out: list[bytes | None] | None = None
        for i, row in enumerate(rows):
            if (rate >= 1.0 or rnd() < rate) and isinstance(row, dict):
                try:
                    text = _encode({k: row.get(k) for k in features})
                except Exception:  # a value JSON can't hold: not sampled (never a failure)
                    continue
                if out is None:
                    out = [None] * len(rows)
                out[i] = text
        return out

    # --- the writer ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log",
                                            daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking entries, write every queued one, and stop the writer."""
        with self._lock:
            self._stop = True
        self._wake.set()
        self._arrived.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log_event(log, logging.ERROR, "prediction_log_flush_timeout",
                          pending=self._pending, seconds=timeout)
        else:
            self._drain()

    def flush(self) -> None:
        """Write what is queued now, on the caller's thread (for tests and tools)."""
        self._drain()

    def _run(self) -> None:
        # The log is worth less than the answers it records: on a small box the writer runs
        # at a lower CPU priority, so the event loop wins the cores under load.
        lower_thread_priority()
        while True:
            # Idle (nothing queued), the writer sleeps until a request queues something,
            # instead of waking every flush_seconds on an idle box.
            self._arrived.clear()
            with self._lock:
                idle = not self._entries and not self._stop
            if idle:
                self._arrived.wait()
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self._drain()
            self._warn_drops()
            with self._lock:
                if self._stop and not self._entries:
                    return

    def _take(self) -> list[_Entry]:
        with self._lock:
            taken = []
            rows = 0
            while self._entries and rows < WRITE_BATCH_ROWS:
                entry = self._entries.popleft()
                taken.append(entry)
                rows += len(entry[3])
            return taken

    def _drain(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return
            self._write(taken)

    def _write(self, entries: list[_Entry]) -> None:
        try:
            # Rows made as they are written, 100 at a time between the statements that
            # release the GIL (see Store.insert_predictions).
            self.store.insert_predictions(self._rows(entries))
        except Exception as exc:  # a full disk or a locked file must not stop serving
            log_event(log, logging.ERROR, "prediction_log_write_failed",
                      rows=sum(len(e[3]) for e in entries),
                      error=f"{type(exc).__name__}: {exc}")
            ok = False
        else:
            ok = True
        with self._lock:
            for pipeline, _v, _ts, ids, _out, _in, size in entries:
                n = len(ids)
                counts = self._counts[pipeline]
                if ok:
                    counts.logged += n
                else:
                    counts.failed += n
                self._pending -= n
                self._pending_bytes -= size

    @staticmethod
    def _rows(entries: list[_Entry]) -> Iterator[tuple[str, str, float, int, str, str | None]]:
        encode = _encode
        for pipeline, version, ts, ids, outputs, inputs, _size in entries:
            for i, (pid, output) in enumerate(zip(ids, outputs, strict=True)):
                sampled = inputs[i] if inputs is not None else None
                row_json = sampled.decode() if sampled is not None else None
                # A model's float output is finite, and its repr is its JSON (and cheaper).
                text = repr(output) if type(output) is float else encode(output).decode()
                yield pid, pipeline, ts, version, text, row_json

    def _warn_drops(self) -> None:
        now = time.monotonic()
        if now - self._warned_at < DROP_WARNING_EVERY:
            return
        with self._lock:
            dropped = sum(c.dropped for c in self._counts.values())
            per_pipeline = {p: c.dropped for p, c in self._counts.items() if c.dropped}
        if dropped > self._warned_dropped:
            log_event(log, logging.WARNING, "prediction_log_dropped",
                      dropped=dropped - self._warned_dropped, total=dropped,
                      by_pipeline=per_pipeline, max_pending=self.max_pending,
                      max_pending_bytes=self.max_pending_bytes,
                      hint="raise server.log_queue_max or server.log_queue_max_mb, or the "
                           "disk is too slow")
            self._warned_dropped = dropped
            self._warned_at = now

    # --- what it has done ----------------------------------------------------------------

    def stats(self, pipeline: str) -> PredictionLogInfo:
        with self._lock:
            c = self._counts.get(pipeline) or _Counts()
            return PredictionLogInfo(logged=c.logged, dropped=c.dropped, failed=c.failed,
                                      pending=self._pending, sample_rate=self.sample_rate)
