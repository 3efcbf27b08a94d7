"""The console's reads never hold up predictions: every route that reads the store answers
off the event loop, and a pipeline's counts come from SQLite's counts, not from decoding
its whole history."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from appliance.core import StateDir, load
from appliance.daemon import Services
from appliance.serving import create_app
from tests.conftest import FAST_CONFIG, copy_state

# Every GET that reads the store (the console polls most of them every 1.5 s).
READS = ["/ready", "/v1/pipelines", "/v1/pipelines/machines", "/v1/pipelines/machines/models",
         "/v1/pipelines/machines/ingestions", "/v1/pipelines/machines/jobs", "/v1/events",
         "/v1/feature-sets", "/v1/pipelines/machines/drift", "/metrics"]


@pytest.fixture
def app_and_store(tmp_path: Path):
    root = tmp_path / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(FAST_CONFIG)
    services = Services.build(load(root), StateDir(root))
    services.store.ensure_pipeline("machines")
    services.started = True
    yield create_app(services), services.store
    services.store.close()


@pytest.mark.parametrize("path", READS)
def test_a_read_waiting_for_the_store_does_not_stop_the_event_loop(app_and_store, path):
    """A write that holds the store for a second (a slow disk, a big batch of the prediction
    log): a read that waits for it must wait on a worker thread, while the event loop goes
    on answering (here /health, which stands for predictions)."""
    app, store = app_and_store
    holding = threading.Event()
    hold = 1.5  # a loop stopped behind the write waits all of it; a free one, a moment

    def slow_write() -> None:
        with store._atomic():
            holding.set()
            time.sleep(hold)

    async def main() -> tuple[float, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            writer = threading.Thread(target=slow_write)
            writer.start()
            holding.wait(5)
            t = time.perf_counter()
            read = asyncio.create_task(http.get(path))
            await asyncio.sleep(0.05)  # the read has started and waits for the store
            health = await http.get("/health")
            took = time.perf_counter() - t
            assert health.status_code == 200
            status = (await read).status_code
            writer.join()
            return took, status

    took, status = asyncio.run(main())
    assert status in (200, 503), status  # /ready: 503 is its answer before models load
    # Half the hold: a loaded box (two test workers) slows a free loop to 0.4 s at worst.
    assert took < hold / 2, f"/health waited {took:.2f} s behind {path}"


def test_a_pipelines_counts_cover_its_whole_history(trained_template, tmp_path, start_daemon):
    """10,050 files: the detail counts every one of them (it used to count the newest 10,000
    by decoding them) and the list counts every data set version."""
    root = copy_state(trained_template, tmp_path / "state")
    # Recent: retention (90 days for refused and duplicate files' records) keeps them.
    recent = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    db = sqlite3.connect(root / "appliance.db")
    with db:
        first = db.execute("SELECT COALESCE(MAX(version), 0) FROM datasets "
                           "WHERE pipeline = 'machines'").fetchone()[0]
        db.executemany(
            "INSERT INTO ingestions (pipeline, file_name, status, details_json, warnings_json,"
            " received_at, finished_at) VALUES ('machines', ?, ?, '{}', '[]', ?, ?)",
            [(f"f{i}.csv", "rejected" if i % 2 else "duplicate", f"{recent}Z",
              f"{recent}.5Z") for i in range(10_050)])
        db.executemany(
            "INSERT INTO datasets (pipeline, version, path, rows, sha256, created_at)"
            " VALUES ('machines', ?, ?, 10, ?, ?)",
            [(first + 1 + i, f"datasets/machines/x{i}.parquet", f"{i:064x}", f"{recent}Z")
             for i in range(500)])
    db.close()
    daemon = start_daemon(root)
    detail = daemon.get("/v1/pipelines/machines").json()
    assert detail["ingestions"] == {"accepted": 1, "rejected": 5025, "duplicate": 5025}
    assert detail["datasets"] == first + 500 and detail["models"] == 1
    listed = daemon.get("/v1/pipelines").json()["pipelines"]
    machines = next(p for p in listed if p["name"] == "machines")
    assert machines["datasets"] == first + 500
    assert machines["rows"] == detail["rows"] and machines["production_version"] == 1
    assert machines["last_ingestion"] == f"{recent}.5Z"
    assert machines["primary_metric"] == "auc" and machines["primary_metric_value"] > 0.5
