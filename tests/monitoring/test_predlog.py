"""The prediction log's queue is bounded in bytes, whatever callers send: it keeps only the
model's inputs of the sampled rows, never the request's other fields or unsampled rows."""

from __future__ import annotations

import gc
import tracemalloc

from appliance.monitoring import PredictionIds, PredictionLog
from appliance.store import Store


def test_the_queue_keeps_none_of_a_requests_other_fields(tmp_path):
    store = Store.open(tmp_path / "a.db")
    # The writer is not started: everything recorded stays queued.
    log = PredictionLog(store, sample_rate=1.0, max_pending=100_000, flush_seconds=3600)
    ids = PredictionIds()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            # A field the model ignores, 2 MB each, in a fresh string per request.
            rows = [{"a": i, "b": "x", "note": "n" * (2 << 20) + str(i)}]
            assert log.record("p", 1, ids.take(1), [0.5], rows, ("a", "b"))
            del rows
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, f"the queue holds {held / 2**20:.0f} MB of 40 requests"
    assert log.stats("p").pending == 40 and log.stats("p").dropped == 0
    log.flush()
    inputs = [row for _, _, row, _ in store.prediction_inputs("p", 0.0)]
    assert sorted(r["a"] for r in inputs) == list(range(40))
    assert all(set(r) == {"a", "b"} for r in inputs)  # the model's inputs only
    store.close()


def test_the_queue_is_bounded_in_bytes_by_what_it_keeps(tmp_path):
    store = Store.open(tmp_path / "a.db")
    log = PredictionLog(store, sample_rate=1.0, max_pending=100_000, flush_seconds=3600,
                        max_pending_bytes=1 << 20)
    ids = PredictionIds()
    accepted = sum(log.record("p", 1, ids.take(1), [0.5], [{"c": "c" * 100_000 + str(i)}],
                              ("c",)) for i in range(50))
    stats = log.stats("p")
    assert 5 <= accepted <= 10, accepted  # about 1 MB of 100 KB inputs
    assert stats.dropped == 50 - accepted and stats.pending == accepted
    # Without sampled inputs a prediction costs a small, fixed share of the bound.
    log.flush()
    small = PredictionLog(store, sample_rate=0.0, max_pending=100_000, flush_seconds=3600,
                          max_pending_bytes=1 << 20)
    taken = sum(small.record("q", 1, ids.take(100), [0.5] * 100, [{}] * 100, ())
                for _ in range(100))
    assert 20 <= taken < 100, taken  # 10,000 predictions are over 1 MB, 2,000 are not
    # A multiclass output counts its classes.
    wide = PredictionLog(store, sample_rate=0.0, max_pending=100_000, flush_seconds=3600,
                         max_pending_bytes=1 << 20)
    output = {"class": "a", "probabilities": {str(k): 0.01 for k in range(100)}}
    taken = sum(wide.record("r", 1, ids.take(10), [output] * 10, [{}] * 10, ())
                for _ in range(100))
    assert taken < 20, taken
    # The writer gives the room back.
    log.flush()
    assert log.stats("p").pending == 0
    assert log.record("p", 1, ids.take(1), [0.5], [{"c": "c" * 100_000}], ("c",))
    store.close()
