"""The daemon's parts in process, its HTTP app driven through ASGI: a shadow that raises never
harms a request, and a promoted version that starts failing (or slows down) is rolled back
on its own, while a single bad request rolls nothing back.

Errors are injected into a real loaded model: its single-row prediction raises (or sleeps)
for some rows."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.core import StateDir, load
from appliance.daemon import Services
from appliance.monitoring import percentile
from appliance.serving import create_app
from tests.conftest import FAST_CONFIG, SAMPLES, copy_state
from tests.monitoring.prometheus_conventions import naming_problems

CONFIG = FAST_CONFIG + """
[pipelines.machines.promotion]
policy = "manual"

[shadow]
sample_rate = 1.0
min_requests = 40
min_labelled = 1000

[rollout]
watch_seconds = 60
min_requests = 100
"""


@pytest.fixture
def services(trained_template, tmp_path: Path):
    """`machines` with v1 in production and v2, trained here, waiting (manual policy)."""
    root = copy_state(trained_template, tmp_path / "state")
    (root / "appliance.toml").write_text(CONFIG)
    services = Services.build(load(root), StateDir(root))
    services.load_production_models()
    services.started = True
    record = services.trainer.builder.train_and_gate("machines", "test")
    assert record.version == 2 and record.stage == "candidate", record.decision
    assert record.decision.startswith("waiting for `appliance promote machines 2`")
    yield services
    for thread in threading.enumerate():  # the drift re-check a swap starts
        if thread.name.startswith("drift-recheck-"):
            thread.join(30)
    if services.shadows is not None:
        services.shadows.close()
    services.trainer.shutdown()
    services.store.close()


def request_rows(n: int) -> list[dict[str, Any]]:
    frame = pl.read_csv(SAMPLES / "machines_02.csv").head(n)
    return frame.drop("failed_within_24h", "reading_id", "timestamp").to_dicts()


def send(services: Services, rows: list[dict[str, Any]]) -> list[httpx.Response]:
    """One single-row predict call per row, through the app (fast path and all)."""
    app = create_app(services)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return [await http.post("/v1/pipelines/machines/predict", json={"rows": [row]})
                    for row in rows]

    return asyncio.run(main())


def scrape(services: Services) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The app's /metrics: {(sample name, sorted labels): value}, its names checked against
    Prometheus' conventions."""
    app = create_app(services)

    async def main() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return (await http.get("/metrics")).text

    text = asyncio.run(main())
    assert naming_problems(text) == []
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["machine_id"], row["temperature_c"], row["rpm"]


def inject(model: Any, rows: list[dict[str, Any]], action: Any) -> None:
    """Make a loaded model's single-row prediction call ``action`` on these rows (by
    content: a call the fast path hands on to the route fails there too); the model is
    otherwise untouched."""
    original = model.predict_one
    bad = {key(r) for r in rows}

    def predict_one(row: Any) -> Any:
        if key(row) in bad:
            action()
        return original(row)

    model.predict_one = predict_one


def fail() -> None:
    raise RuntimeError("injected: this model fails on some rows")


def test_a_shadow_that_raises_never_harms_a_request_and_is_rejected(services):
    assert services.shadows is not None
    state = services.shadows.start_shadow("machines", 2)
    assert state.startswith("shadowing production v1")
    rows = request_rows(50)
    inject(services.shadows.active["machines"].model, rows, fail)  # fails on every row
    answers = send(services, rows)
    assert [a.status_code for a in answers] == [200] * 50
    assert {a.json()["model_version"] for a in answers} == {1}
    assert services.shadows.wait_idle()
    numbers = services.shadows.numbers("machines", 2)
    assert numbers is not None and numbers.errors == 50 and numbers.scored == 0
    assert numbers.requests == 50 and numbers.sampled == 50
    m = scrape(services)
    shadow = (("pipeline", "machines"), ("version", "2"))
    assert m[("appliance_shadow_version", (("pipeline", "machines"),))] == 2
    assert m[("appliance_shadow_requests_total", shadow)] == 50
    assert m[("appliance_shadow_errors_total", shadow)] == 50
    assert m[("appliance_shadow_scored_requests_total", shadow)] == 0
    assert services.shadows.check("machines") == "rejected"
    v2 = services.store.model("machines", 2)
    assert v2 is not None and v2.stage == "rejected"
    assert "failed on 50 of the 50 requests" in (v2.decision or "")
    assert "injected" in (v2.decision or "")
    # No more shadowing: the request path stops sampling at once.
    assert "machines" not in services.shadows.active
    assert send(services, rows[:1])[0].json()["model_version"] == 1


def test_a_promoted_version_that_starts_failing_is_rolled_back(services):
    rollout = services.rollout
    assert rollout is not None
    rows = request_rows(150)
    assert {a.status_code for a in send(services, rows)} == {200}  # v1's record: no errors
    services.trainer.production.promote("machines", 2, "promoted by an operator")
    assert "machines" in rollout.watches
    m = scrape(services)
    assert m[("appliance_rollout_watched_version",
              (("pipeline", "machines"), ("previous", "1")))] == 2
    assert 55 < m[("appliance_rollout_remaining_seconds", (("pipeline", "machines"),))] <= 60
    inject(services.live.get("machines"), rows[::10], fail)  # v2 fails on one row in ten
    answers = send(services, rows)
    assert sum(a.status_code == 500 for a in answers) == 15
    assert rollout.check("machines") == "errors"
    assert services.live.get("machines").version == 1
    v2 = services.store.model("machines", 2)
    assert v2.stage == "rejected" and v2.decision.startswith("rolled back (errors)")
    events = [e for e in services.store.events(limit=20) if e.kind == "rolled_back"]
    assert events and events[0].details["cause"] == "errors"
    assert events[0].details["failed"] == 2 and events[0].details["errors"] == 15
    assert "failed on 15 of its 150 requests" in events[0].message
    assert {a.json()["model_version"] for a in send(services, rows[:5])} == {1}
    assert not [k for k in scrape(services) if k[0].startswith("appliance_rollout_")]


def test_one_bad_request_rolls_nothing_back_and_a_slow_version_is_rolled_back(services):
    rollout = services.rollout
    rows = request_rows(150)
    send(services, rows)
    services.trainer.production.promote("machines", 2, "promoted by an operator")
    inject(services.live.get("machines"), rows[:1], fail)  # one error in 150 requests
    assert sum(a.status_code == 500 for a in send(services, rows)) == 1
    assert rollout.check("machines") is None
    assert services.live.get("machines").version == 2
    # Now every request takes far longer than v1's p99 (under a millisecond on a quiet box;
    # tens of ms on a loaded one, 2 cores shared with other tests): 3x it and 50 ms more,
    # so the rollout's test (slower than 1.5x v1's p99, and by rollout.latency_min_ms = 20
    # ms) sees every one of them as slow.
    p99_before = percentile(rollout.watches["machines"].before.buckets, 0.99) or 0.0
    delay = 3 * p99_before + 0.05
    inject(services.live.get("machines"), rows, lambda: time.sleep(delay))
    send(services, rows)
    assert rollout.check("machines") == "latency"
    assert services.live.get("machines").version == 1
    event = next(e for e in services.store.events(limit=20) if e.kind == "rolled_back")
    assert event.details["cause"] == "latency" and "p99" in event.message


def test_a_promoted_version_that_does_worse_on_feedback_is_rolled_back(services):
    """No errors, no slowness: its answers are just wrong (the probabilities inverted), and
    the feedback on both versions' predictions says so."""
    rollout = services.rollout
    frame = pl.read_csv(SAMPLES / "machines_02.csv").head(150)
    rows = frame.drop("failed_within_24h", "reading_id", "timestamp").to_dicts()
    labels = frame["failed_within_24h"].to_list()

    def answered(answers: list[httpx.Response]) -> None:
        services.predlog.flush()
        ids = [a.json()["prediction_ids"][0] for a in answers]
        services.store.add_feedback("machines", list(zip(ids, labels, strict=True)))

    answered(send(services, rows))
    services.trainer.production.promote("machines", 2, "promoted by an operator")
    model = services.live.get("machines")
    original = model.predict_one
    model.predict_one = lambda row: 1.0 - original(row)
    answers = send(services, rows)
    assert {a.status_code for a in answers} == {200}
    assert rollout.check("machines") is None  # no feedback on v2 yet: nothing to judge
    answered(answers)
    assert rollout.check("machines") == "performance"
    assert services.live.get("machines").version == 1
    event = next(e for e in services.store.events(limit=20) if e.kind == "rolled_back")
    assert event.details["cause"] == "performance" and event.details["labelled"] == 150
    assert "did worse on live feedback: mean log loss" in event.message


def restart(services: Services) -> Services:
    """A new process's parts on the same state directory (the old ones closed, as at a stop
    or after a crash: a watch is kept at each check)."""
    root = services.state.root
    services.trainer.shutdown()
    services.store.close()
    again = Services.build(load(root), StateDir(root))
    again.load_production_models()
    again.started = True
    return again


def test_a_restart_resumes_the_watch_with_what_it_had_counted(services):
    rows = request_rows(150)
    send(services, rows)
    services.trainer.production.promote("machines", 2, "promoted by an operator")
    inject(services.live.get("machines"), rows[::10], fail)
    assert sum(a.status_code == 500 for a in send(services, rows[:60])) == 6
    services.rollout.clock = lambda: time.time() + 30       # half the watch has gone by
    assert services.rollout.check("machines") is None       # under min_requests: not judged
    again = restart(services)
    try:
        watch = again.rollout.watches["machines"]
        assert (watch.version, watch.previous, watch.resumed) == (2, 1, True)
        assert 25 <= watch.until - time.time() <= 31             # the time it had left
        status = again.rollout.status("machines")
        assert "resumed after a restart; 60 requests, 6 errors" in status, status
        # After the restart v2 goes on failing; the errors before it count too.
        inject(again.live.get("machines"), rows[::10], fail)
        assert sum(a.status_code == 500 for a in send(again, rows[60:])) == 9
        assert again.rollout.check("machines") == "errors"
        assert again.live.get("machines").version == 1
        event = next(e for e in again.store.events(limit=20) if e.kind == "rolled_back")
        assert event.details["requests"] == 150 and event.details["errors"] == 15
        assert again.store.rollout_watches() == []
    finally:
        if again.shadows is not None:
            again.shadows.close()
        again.trainer.shutdown()
        again.store.close()


def test_a_watch_that_ended_or_whose_version_no_longer_serves_does_not_resume(services):
    services.trainer.production.promote("machines", 2, "promoted by an operator")
    assert [w.version for w in services.store.rollout_watches()] == [2]
    services.trainer.production.promote("machines", 1, "rolled back by an operator")
    # An operator's rollback is watched too (v1 against v2); one watch per pipeline.
    assert [(w.version, w.previous) for w in services.store.rollout_watches()] == [(1, 2)]
    services.trainer.production.promote("machines", 2, "promoted by an operator")
    services.rollout.clock = lambda: time.time() + 61
    assert services.rollout.check("machines") is None    # the watch passed
    assert services.store.rollout_watches() == []
    again = restart(services)
    try:
        assert again.rollout.watches == {}
    finally:
        again.trainer.shutdown()
        again.store.close()
