"""Serving's parts, in process: the fast single-row path gives exactly LightGBM's answers,
rows are encoded exactly as in training, a swapped-out model frees its C resources, the
prediction log never makes a request wait, and the Host and start-up checks."""

from __future__ import annotations

import gc
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from datetime import datetime, timedelta

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from appliance.core import (
    ApplianceError,
    PipelineSettings,
    Settings,
    StateDir,
    TrainSettings,
    parse,
)
from appliance.daemon.lifecycle import StartupError, check_startup
from appliance.features import to_matrix
from appliance.models import train
from appliance.models.predictor import LiveModels, LoadedModel, live_fast_configs
from appliance.monitoring import PredictionIds, PredictionLog
from appliance.serving import HostPolicy
from appliance.store import Store

FAST_TRAIN = TrainSettings(num_boost_round=60, early_stopping_rounds=20, threads=1)


def _frame(task: str, n: int = 800, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 100, size=n)
    color = rng.choice(["red", "green", "blue", "cyan", "teal"], size=n)
    flag = rng.random(n) < 0.3
    start = datetime(2026, 1, 1)
    when = [start + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 90, size=n)]
    signal = x1 + (x2 / 50.0) + (color == "red") * 1.5 - flag * 0.7
    if task == "binary":
        y = (signal + rng.normal(scale=0.5, size=n) > 1.0).astype(np.int64)
    elif task == "multiclass":
        y = np.where(signal < 0.5, "low", np.where(signal < 1.8, "mid", "high"))
    else:
        y = signal * 3 + rng.normal(scale=0.2, size=n)
    df = pl.DataFrame({"x1": x1, "x2": x2, "color": color, "flag": flag, "when": when,
                       "target": y})
    # Missing values in every kind of column.
    holes = rng.random(n) < 0.1
    return df.with_columns(
        pl.when(pl.Series(holes)).then(None).otherwise(pl.col("x1")).alias("x1"),
        pl.when(pl.Series(np.roll(holes, 1))).then(None).otherwise(pl.col("color"))
        .alias("color"),
        pl.when(pl.Series(np.roll(holes, 2))).then(None).otherwise(pl.col("flag"))
        .alias("flag"),
    )


def _loaded(task: str) -> tuple[LoadedModel, pl.DataFrame]:
    df = _frame(task)
    candidate = train(df, PipelineSettings(target="target", task=task), FAST_TRAIN)
    # As the registry loads it: from the saved text.
    booster = lgb.Booster(model_str=candidate.booster.model_to_string())
    model = LoadedModel(pipeline="p", version=1, booster=booster, spec=candidate.spec, meta={})
    model.warm()
    return model, df


def _request_rows(df: pl.DataFrame) -> list[dict]:
    rows = df.drop("target").to_dicts()
    for row in rows:
        row["when"] = row["when"].isoformat()
        row["not_a_feature"] = "ignored"
    return rows


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_fast_path_batch_path_and_booster_predict_are_identical(task):
    model, df = _loaded(task)
    rows = _request_rows(df)

    # Serving encodes a JSON row exactly as training encoded the frame.
    x_train = to_matrix(df, model.spec)
    x_serve = model.encoder.encode(rows)
    np.testing.assert_array_equal(x_serve, x_train)  # NaN == NaN here

    reference = model.booster.predict(x_train)  # LightGBM's defaults, all threads
    fast = np.array([model.fast.predict(list(x_train[i])) for i in range(len(rows))])
    batch = model.predict_matrix(x_serve)
    assert np.array_equal(fast.reshape(reference.shape), reference)
    assert np.array_equal(batch, reference)

    # And through the request-shaped path: one row at a time and all at once.
    answers_one = [model.predict_rows([row])[0] for row in rows]
    answers_batch = model.predict_rows(rows)
    assert answers_one == answers_batch == model.shape_outputs(reference)
    if task == "multiclass":
        first = answers_batch[0]
        assert set(first) == {"class", "probabilities"}
        assert set(first["probabilities"]) == {"high", "low", "mid"}
        assert math.isclose(sum(first["probabilities"].values()), 1.0, rel_tol=1e-9)
        assert first["class"] == max(first["probabilities"], key=first["probabilities"].get)
    else:
        assert all(isinstance(a, float) for a in answers_batch)


def test_unseen_category_is_missing_and_null_is_missing():
    model, df = _loaded("binary")
    row = _request_rows(df.head(1))[0]
    as_null = model.predict_rows([{**row, "color": None}])
    assert model.predict_rows([{**row, "color": "ultraviolet"}]) == as_null
    assert model.predict_rows([{**row, "color": "red"}]) != as_null


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("x1", "1.5", "a number or null"),
    ("x1", True, "a number or null"),
    ("x1", [1], "a number or null"),
    ("x1", 10**400, "a finite number or null"),
    ("x1", float("inf"), "a finite number or null"),
    ("x1", float("nan"), "a finite number or null"),
    ("color", 3, "a string or null"),
    ("flag", "true", "true, false or null"),
    ("flag", 1, "true, false or null"),
    ("when", "yesterday", "an ISO 8601 date or time string, or null"),
])
def test_each_wrong_value_is_a_422_naming_row_field_and_expectation(field, value, expected):
    model, df = _loaded("regression")
    rows = _request_rows(df.head(3))
    rows[2][field] = value
    for call in (lambda: model.predict_rows(rows), lambda: model.predict_rows(rows[2:])):
        with pytest.raises(ApplianceError) as info:
            call()
        err = info.value
        assert err.status == 422 and err.details["field"] == field
        assert err.details["expected"] == expected
        assert f"`{field}`" in err.message and expected in err.message
    assert info.value.details["row"] == 0  # the single row is row 0 of its request
    with pytest.raises(ApplianceError) as info:
        model.predict_rows(rows)
    assert info.value.details["row"] == 2 and info.value.message.startswith("row 2:")


def test_a_missing_feature_and_a_row_that_is_not_an_object():
    model, df = _loaded("regression")
    row = _request_rows(df.head(1))[0]
    del row["x2"]
    with pytest.raises(ApplianceError) as info:
        model.predict_rows([row])
    assert info.value.code == "missing_feature" and info.value.details["field"] == "x2"
    with pytest.raises(ApplianceError) as info:
        model.predict_rows([_request_rows(df.head(1))[0], [1, 2]])
    assert info.value.details == {"row": 1, "field": "(row)",
                                  "expected": "an object of feature values"}


def test_a_swapped_out_model_serves_its_requests_then_frees_its_fast_config():
    model, df = _loaded("binary")
    rows = _request_rows(df.head(5))
    gc.collect()  # models of earlier tests, held by old tracebacks
    before = live_fast_configs()
    live = LiveModels()
    live.swap(model)
    in_flight = live.get("p")  # a request took the model
    newer = LoadedModel(pipeline="p", version=2, booster=model.booster, spec=model.spec,
                        meta={})
    assert live_fast_configs() == before + 1
    old = live.swap(newer)
    assert old is model and live.get("p") is newer
    # The request finishes on the model it started with.
    assert in_flight.predict_rows(rows[:1]) == model.predict_rows(rows)[:1]
    finalizer = model.fast._finalizer
    assert finalizer.alive
    del model, old, in_flight
    gc.collect()
    assert not finalizer.alive
    assert live_fast_configs() == before
    assert live.get("p").predict_rows(rows)  # the new one still serves


def test_prediction_ids_are_unique_and_cheap():
    ids = PredictionIds()
    many = ids.take(50_000)
    assert len(set(many)) == 50_000
    assert not set(many) & set(PredictionIds().take(1000))
    started = time.perf_counter()
    ids.take(100_000)
    assert time.perf_counter() - started < 1.0


class _SlowStore(Store):
    """A real store whose writes wait until released: a disk that has stalled."""

    release: threading.Event

    def insert_predictions(self, rows):  # type: ignore[no-untyped-def]
        self.release.wait(10)
        super().insert_predictions(rows)


def test_the_log_never_makes_a_request_wait_and_counts_what_it_drops(tmp_path):
    store = _SlowStore.open(tmp_path / "a.db")
    store.release = threading.Event()
    log = PredictionLog(store, sample_rate=0.5, max_pending=100, flush_seconds=0.01)
    log.start()
    ids = PredictionIds()
    accepted = 0
    started = time.perf_counter()
    for i in range(300):
        pid = ids.take(1)
        accepted += log.record("p", 1, pid, [0.25], [{"a": i, "b": "x", "extra": 1}],
                               ("a", "b"))
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, "recording must not wait for the stalled writer"
    stats = log.stats("p")
    # The writer took one batch and is stuck writing it; the queue filled behind it.
    assert stats.dropped == 300 - accepted and stats.dropped >= 100
    store.release.set()
    log.close()
    stats = log.stats("p")
    assert stats.logged == accepted and stats.pending == 0 and stats.failed == 0
    assert store.count_predictions("p") == accepted
    sampled = store.prediction_inputs("p", 0.0)
    assert 0 < len(sampled) < accepted  # about half
    assert all(set(row) == {"a", "b"} for _, _, row, _ in sampled)  # features only
    store.close()


def test_the_log_writes_what_is_queued_when_closed(tmp_path):
    store = Store.open(tmp_path / "a.db")
    log = PredictionLog(store, sample_rate=1.0, max_pending=10_000, flush_seconds=3600)
    log.start()
    ids = PredictionIds().take(2500)
    for i in range(0, 2500, 100):
        log.record("p", 3, ids[i:i + 100], [{"class": "a", "probabilities": {"a": 1.0}}] * 100,
                   [{"f": i}] * 100, ("f",))
    assert store.count_predictions("p") == 0  # the writer sleeps for an hour
    log.close()
    assert store.count_predictions("p") == 2500
    _ts, version, row, output = store.prediction_inputs("p", 0.0, limit=1)[0]
    assert version == 3 and set(row) == {"f"}
    assert output == {"class": "a", "probabilities": {"a": 1.0}}
    assert log.record("p", 3, ["late"], [1.0], [{}], ()) is False  # closed: dropped
    store.close()


@pytest.mark.parametrize(("bound", "names", "host", "allowed"), [
    ("127.0.0.1", [], b"127.0.0.1:8080", True),
    ("127.0.0.1", [], b"127.0.0.1", True),
    ("127.0.0.1", [], b"localhost:8080", True),
    ("127.0.0.1", [], b"LOCALHOST.:8080", True),
    ("127.0.0.1", [], b"[::1]:8080", True),
    ("127.0.0.1", [], b"evil.example:8080", False),  # DNS rebinding
    ("127.0.0.1", [], b"10.0.0.5:8080", False),
    ("127.0.0.1", [], b"127.0.0.1:80:80", False),
    ("127.0.0.1", [], b"", False),
    ("127.0.0.1", [], b"caf\xc3\xa9.example", False),
    ("127.0.0.1", ["appliance.local"], b"appliance.local:8080", True),
    ("127.0.0.1", ["*.plant.example"], b"line-3.plant.example", True),
    ("127.0.0.1", ["*.plant.example"], b"plant.example.evil.example", False),
    ("0.0.0.0", [], b"192.168.1.20:8080", True),  # any address: no name to rebind
    ("0.0.0.0", [], b"gateway.lan:8080", False),
    ("0.0.0.0", ["gateway.lan"], b"gateway.lan:8080", True),
    ("192.168.1.20", [], b"192.168.1.20:8080", True),
    ("192.168.1.20", [], b"192.168.1.21:8080", False),
    ("192.168.1.20", [], b"localhost:8080", False),
    ("::1", [], b"[::1]:9000", True),
    ("box.lan", [], b"box.lan:8080", True),
])
def test_host_policy(bound, names, host, allowed):
    assert HostPolicy(bound, names).allows(host) is allowed


def _settings(**server) -> Settings:
    return parse({"server": server})


def test_start_is_refused_on_an_open_address_unless_protected_or_opted_out(tmp_path, caplog):
    state = StateDir(tmp_path / "s")
    state.create()
    check_startup(_settings(), state)
    with pytest.raises(StartupError, match=r"refusing to listen on 0\.0\.0\.0.*predict_token_req"):
        check_startup(_settings(host="0.0.0.0"), state)
    with pytest.raises(StartupError):
        check_startup(_settings(host="box.lan"), state)
    check_startup(_settings(host="0.0.0.0", predict_token_required=True), state)
    with caplog.at_level(logging.WARNING, logger="appliance.daemon"):
        check_startup(_settings(host="0.0.0.0", allow_open_predict=True), state)
    assert "open_predict" in caplog.text


def test_token_files_are_made_private_and_an_empty_token_is_refused(tmp_path):
    state = StateDir(tmp_path / "s")
    state.create()
    state.ensure_predict_token()
    for path in (state.token_file, state.predict_token_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        os.chmod(path, 0o644)
    check_startup(_settings(), state)
    for path in (state.token_file, state.predict_token_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    state.token_file.write_text("\n")
    with pytest.raises(StartupError, match="empty or too short"):
        check_startup(_settings(), state)


class _FlakyStore(Store):
    """A real store whose first write fails, as on a full disk."""

    failures = 1

    def insert_predictions(self, rows):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().insert_predictions(rows)


def test_a_failed_write_is_counted_and_the_log_goes_on(tmp_path, caplog):
    store = _FlakyStore.open(tmp_path / "a.db")
    log = PredictionLog(store, sample_rate=0.0, max_pending=100, flush_seconds=3600)
    ids = PredictionIds()
    log.record("p", 1, ids.take(3), [0.1, 0.2, 0.3], [{}, {}, {}], ())
    with caplog.at_level(logging.ERROR, logger="appliance.predlog"):
        log.flush()
    assert "prediction_log_write_failed" in caplog.text
    log.record("p", 1, ids.take(2), [0.4, 0.5], [{}, {}], ())
    log.flush()
    stats = log.stats("p")
    assert (stats.failed, stats.logged, stats.pending) == (3, 2, 0)
    assert store.count_predictions("p") == 2
    store.close()
