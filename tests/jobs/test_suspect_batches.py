"""Suspect batches, end to end with the real daemon: a batch with inverted labels is held
with `suspect_labels` while the good model keeps serving and nothing trains on it; a small
inverted batch is held too and can be discarded (its files kept); a normal batch trains;
a drifted batch with bad scores is a changed world and trains as usual; `appliance
release` lets the held batch train."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from appliance.cli import cli
from tests.conftest import SAMPLES, copy_state, drop, wait_for

TARGET = "failed_within_24h"
PREDICT = "/v1/pipelines/machines/predict"


def inverted(frame: pl.DataFrame) -> pl.DataFrame:
    """0 and 1 of the target swapped, as a broken export would."""
    return frame.with_columns((1 - pl.col(TARGET)).alias(TARGET))


def heat_wave(frame: pl.DataFrame) -> pl.DataFrame:
    """Most features moved far from what the model was trained on."""
    return frame.with_columns(
        pl.col("temperature_c") + 25, pl.col("vibration_mm_s") * 3,
        pl.col("pressure_bar") + 4, pl.col("rpm") + 900, pl.col("humidity_pct") + 40,
        pl.col("hours_since_service") * 4)


def write(frame: pl.DataFrame, folder: Path, name: str) -> Path:
    path = folder / name
    frame.write_csv(path)
    return path


def ingestion(daemon, name: str) -> dict | None:
    items = daemon.get("/v1/pipelines/machines/ingestions").json()["ingestions"]
    return next((i for i in items if i["file_name"] == name), None)


def checked(daemon, name: str) -> dict:
    """The file's ingestion once its data set exists and its label check is done (the
    check ends before the trainer is asked, so a `label_check` log line marks it)."""
    def done() -> dict | None:
        item = ingestion(daemon, name)
        if item is None or item["dataset_version"] is None:
            return None
        line = f"dataset_version={item['dataset_version']} "
        return ingestion(daemon, name) if any(
            "label_check" in x and line in x for x in daemon.log().splitlines()) else None
    return wait_for(done, timeout=60, what=f"{name} to be checked")  # type: ignore[return-value]


def events(daemon, kind: str) -> list[dict]:
    return [e for e in daemon.get("/v1/events", params={"pipeline": "machines",
                                                        "limit": 1000}).json()["events"]
            if e["kind"] == kind]


def jobs(daemon) -> list[dict]:
    return daemon.get("/v1/pipelines/machines/jobs").json()["history"][::-1]


def wait_jobs_done(daemon, count: int) -> list[dict]:
    return daemon.wait_jobs_closed("machines", count)


def newest_model(daemon) -> dict:
    return daemon.get("/v1/pipelines/machines/models").json()["models"][0]


def test_suspect_batches_are_held_released_and_discarded(trained_template, tmp_path,
                                                         start_daemon):
    state = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(state)
    daemon.wait_ready_model("machines", 1)
    assert len(jobs(daemon)) == 1  # v1, trained on machines_01 by the template
    rows = pl.read_csv(SAMPLES / "machines_02.csv")
    row = {k: v for k, v in rows.row(0, named=True).items() if k != TARGET}

    # 1. Inverted labels: held with suspect_labels, the good model keeps serving, nothing
    #    trains on it.
    # Other readings than machines_02.csv's (dropped below as the normal batch): a row sent
    # again under its id would replace this batch's copy (see test_train), and step 5
    # checks that a released batch trains.
    other = rows.with_columns(pl.col("reading_id").str.replace("R02-", "R12-", literal=True))
    bad = write(inverted(other), tmp_path, "machines_02_inverted.csv")
    drop(state, "machines", bad)
    item = checked(daemon, bad.name)
    assert item["dataset_version"] == 2
    assert item["dataset_status"] == "held", item
    assert "auc" in item["dataset_status_reason"]
    [event] = events(daemon, "suspect_labels")
    assert event["level"] == "warning"
    message = event["message"]
    assert message.startswith("machines_02_inverted.csv (data set v2): labels suspect, its "
                              "features did not drift: production v1 auc 0.")
    assert "worse than the baseline" in message and "appliance release machines 2" in message
    d = event["details"]
    assert d["metric"] == "auc" and d["rows"] == 1500 and d["held"] is True
    assert d["value"] < 0.3 < 0.7 < d["validation"] and d["below_baseline"] and d["degraded"]
    assert d["worse_than_baseline"] > 10 * d["worse_than_baseline_se"]
    time.sleep(1.5)
    assert len(jobs(daemon)) == 1  # 1,500 new rows, yet no training
    assert daemon.get("/ready").json()["models"] == {"machines": 1}
    answer = daemon.post(PREDICT, json={"rows": [row]}).json()
    assert answer["model_version"] == 1
    detail = daemon.get("/v1/pipelines/machines").json()
    assert detail["held"] == [2]
    summary = daemon.get("/v1/pipelines").json()["pipelines"][0]
    assert summary["held"] == 1 and summary["status"] == "serving"

    # 2. A small inverted batch (40 rows) is held too; discarding it keeps its files.
    small = write(inverted(rows.slice(100, 40)), tmp_path, "late_rows_inverted.csv")
    drop(state, "machines", small)
    item = checked(daemon, small.name)
    assert item["dataset_status"] == "held", item
    assert "log_loss" in item["dataset_status_reason"]  # too few failures for an AUC
    assert daemon.post("/v1/pipelines/machines/datasets/3/discard").status_code == 401
    resp = daemon.post("/v1/pipelines/machines/datasets/3/discard", admin=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "discarded" and body["training_started"] is False
    assert "Nothing is deleted" in body["message"] and "archive/machines/" in body["message"]
    assert (state / "archive/machines" / small.name).exists()
    assert (state / ingestion(daemon, small.name)["dataset_path"]).exists()
    assert ingestion(daemon, small.name)["dataset_status"] == "discarded"
    again = daemon.post("/v1/pipelines/machines/datasets/3/discard", admin=True)
    assert again.status_code == 409 and again.json()["code"] == "not_held"
    missing = daemon.post("/v1/pipelines/machines/datasets/99/release", admin=True)
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_dataset"
    active = daemon.post("/v1/pipelines/machines/datasets/1/release", admin=True)
    assert active.status_code == 409 and "not held" in active.json()["message"]
    assert [e["details"]["dataset_version"] for e in events(daemon, "dataset_discarded")] == [3]
    assert len(jobs(daemon)) == 1

    # 3. A normal batch is not held: it trains, on v1 and v4 only.
    drop(state, "machines", SAMPLES / "machines_02.csv")
    item = checked(daemon, "machines_02.csv")
    assert item["dataset_version"] == 4 and item["dataset_status"] == "active"
    history = wait_jobs_done(daemon, 2)
    assert history[1]["trigger"] == "new_data" and history[1]["status"] == "succeeded"
    assert [s["version"] for s in newest_model(daemon)["lineage"]["datasets"]] == [1, 4]

    # 4. Drifted features and bad scores: a changed world, not a label bug: it trains.
    drifted = write(inverted(heat_wave(pl.read_csv(SAMPLES / "machines_03_drifted.csv"))),
                    tmp_path, "heat_wave.csv")
    drop(state, "machines", drifted)
    item = checked(daemon, drifted.name)
    assert item["dataset_version"] == 5 and item["dataset_status"] == "active", item
    assert "suspect_labels_but_drifted pipeline=machines dataset_version=5" in daemon.log()
    assert [e["details"].get("dataset_version") for e in events(daemon, "suspect_labels")] \
        == [3, 2]
    assert any(e["details"].get("source") == "ingestion"
               for e in events(daemon, "drift_detected"))
    history = wait_jobs_done(daemon, 3)
    assert [s["version"] for s in newest_model(daemon)["lineage"]["datasets"]] == [1, 4, 5]

    # 5. `appliance release` lets the held batch train: the next model learns from it.
    result = CliRunner().invoke(cli, ["release", "machines", "2", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "data set v2 (machines_02_inverted.csv, 1,500 rows) released: training started" \
        in result.output
    assert ingestion(daemon, bad.name)["dataset_status"] == "released"
    assert "released by an operator (was held: suspect labels" in ingestion(
        daemon, bad.name)["dataset_status_reason"]
    history = wait_jobs_done(daemon, 4)
    assert history[3]["trigger"] == "new_data" and history[3]["status"] == "succeeded"
    assert [s["version"] for s in newest_model(daemon)["lineage"]["datasets"]] == [1, 2, 4, 5]
    [released] = events(daemon, "dataset_released")
    assert released["details"]["dataset_version"] == 2
    assert released["details"]["training_started"] is True


def test_training_leaves_out_held_discarded_and_unchecked_data_sets(tmp_path):
    from appliance.core import StateDir, parse
    from appliance.ingest import Ingester
    from appliance.jobs import SuspectBatches, Trainer
    from appliance.models import LiveModels, Registry
    from appliance.store import Events, Store

    state = StateDir(tmp_path / "s")
    state.create()
    store = Store.open(state.db)
    events_ = Events(store)
    settings = parse({"pipelines": {"machines": {"target": TARGET, "timestamp": "timestamp"}}})
    trainer = Trainer(state, store, Registry(state, store), events_, settings, LiveModels())
    suspects = SuspectBatches(state, store, events_, settings, trainer.live, trainer)
    trainer.builder.unchecked = suspects.unchecked
    ingester = Ingester(state, store, events_, settings)
    sources = [SAMPLES / "machines_01.csv", SAMPLES / "machines_02.csv",
               SAMPLES / "machines_03_drifted.csv"]
    extra = write(pl.read_csv(SAMPLES / "machines_02.csv").head(300), tmp_path, "late.csv")
    for i, source in enumerate([*sources, extra]):
        claimed = state.pipeline_dir(state.processing, "machines") / f"{i}__{source.name}"
        claimed.write_bytes(source.read_bytes())
        ingester.process(claimed, "machines")
    assert store.set_dataset_status("machines", 2, "held", "suspect labels: test")
    assert store.set_dataset_status("machines", 3, "held", "suspect labels: test")
    suspects.discard("machines", 3)
    assert [d.version for d in store.training_datasets("machines")] == [1, 4]
    assert store.rows_since("machines", 0) == 3000 + 300  # held and discarded rows don't count
    with suspects.checking("machines", 4):  # a training that starts during v4's check
        record = trainer.train_and_gate("machines", "manual")
    assert [d["version"] for d in record.lineage["datasets"]] == [1]
    assert suspects.unchecked("machines") == set()
    record = trainer.train_and_gate("machines", "manual")
    assert [d["version"] for d in record.lineage["datasets"]] == [1, 4]
    trainer.shutdown()
    store.close()
