"""Housekeeping: retention keeps what models need and bounds the rest (records, files,
versions, pipelines that hold nothing), and an operator can delete a pipeline."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.core import StateDir, parse
from appliance.ingest import Ingester
from appliance.jobs import Housekeeping, Trainer
from appliance.models import LiveModels, Registry
from appliance.store import Events, Store
from tests.conftest import SAMPLES, copy_state, drop, wait_for
from tests.ingest.ingest_files import good_csv

DAY = 86400.0
BAD = b"x,y,kind,target\n1,0.5,a,1\n2,1,b,0,7\n"


class Box:
    """A state directory with the real store and ingester, and housekeeping over them."""

    def __init__(self, root: Path, config: dict) -> None:
        self.state = StateDir(root)
        self.state.create()
        self.settings = parse(config)
        self.store = Store.open(self.state.db)
        self.events = Events(self.store)
        self.live = LiveModels()
        self.ingester = Ingester(self.state, self.store, self.events, self.settings)
        self.trainer = Trainer(self.state, self.store, Registry(self.state, self.store),
                               self.events, self.settings, self.live)
        self.housekeeping = Housekeeping(self.state, self.store, self.events, self.settings,
                                         self.trainer, self.live, self.ingester.lock)

    def ingest(self, pipeline: str, name: str, content: bytes):
        claimed = self.state.pipeline_dir(self.state.processing, pipeline) / (
            f"{time.time_ns()}__{name}")
        claimed.write_bytes(content)
        return self.ingester.process(claimed, pipeline)

    def model(self, version: int, datasets: list[int], stage: str,
              promoted_at: str | None = None) -> None:
        folder = self.state.models / "p" / str(version)
        folder.mkdir(parents=True)
        (folder / "model.txt").write_text("tree")
        self.store.add_model(
            pipeline="p", version=version, task="binary", path=f"models/p/{version}",
            model_sha256="0", meta_sha256="0", metrics={},
            lineage={"datasets": [{"version": v} for v in datasets],
                     "max_dataset_version": max(datasets)})
        with sqlite3.connect(self.state.db) as db:
            db.execute("UPDATE models SET stage = ?, promoted_at = ? WHERE version = ?",
                       [stage, promoted_at, version])

    def files(self, area: str, pipeline: str = "p") -> list[str]:
        folder = getattr(self.state, area) / pipeline
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_retention_keeps_what_models_need_and_bounds_the_rest(tmp_path):
    box = Box(tmp_path / "s", {
        "pipelines": {"p": {"retrain": {"min_new_rows": 10**9}}},
        "feature_sets": {"fs": {"key": "x"}},
        "retention": {"datasets_keep": 2, "models_keep": 2},
    })
    for v in range(1, 9):
        assert box.ingest("p", f"d{v}.csv", good_csv(30, offset=100 * v)).record.status \
            == "accepted"
    for v in range(1, 4):
        box.ingest("fs", f"f{v}.csv", good_csv(10, offset=100 * v))
    box.ingest("p", "refused.csv", BAD)
    box.ingest("p", "again.csv", good_csv(30, offset=100))            # a duplicate of d1
    box.ingest("junk", "notes.txt", b"a stray file in a new folder")  # makes a pipeline
    job = box.store.start_job("p", "train", "manual")
    box.store.finish_job(job, "failed", error="x")
    # v2 serves again after a rollback; v4 served before it; v5 and v6 are the newest.
    box.model(1, [1, 2], "archived", "2026-01-01T00:00:00.000Z")
    box.model(2, [2, 3], "production", "2026-01-04T00:00:00.000Z")
    box.model(3, [3, 4], "rejected")
    box.model(4, [4, 5], "archived", "2026-01-03T00:00:00.000Z")
    box.model(5, [5, 6], "rejected")
    box.model(6, [6], "rejected")
    (box.state.inbox / "p").mkdir()
    (box.state.inbox / "p" / "waiting.csv").write_bytes(good_csv())
    (box.state.processing / "p" / "1__claimed.csv").write_bytes(good_csv())

    now = time.time()
    removed = box.housekeeping.apply_retention(now)
    # Models: production, the one before it, the newest two. Data sets: what those were
    # trained on, the newest two, and what no training has seen yet (v7, v8); v1 only goes.
    assert removed["models"] == 2 and removed["datasets"] == 1
    assert sorted(box.store.model_versions("p")) == [2, 4, 5, 6]
    assert box.files("models") == ["2", "4", "5", "6"]
    assert [d.version for d in box.store.datasets("p")] == [2, 3, 4, 5, 6, 7, 8]
    assert "v000001.parquet" not in box.files("datasets")
    assert len(box.files("datasets")) == 7
    records = {r.file_name: r for r in box.store.ingestions("p", limit=100)}
    assert "d1.csv" not in records and "d2.csv" in records  # its record went with it
    assert len(box.store.datasets("fs")) == 3                # a feature set keeps them all
    # Nothing was old enough yet.
    assert box.files("rejected") == ["refused.csv", "refused.csv.reason.json"]
    assert len(box.files("archive")) == 9

    # A month on: refused files go (30 days); originals, records and events stay (90).
    removed = box.housekeeping.apply_retention(now + 31 * DAY)
    assert removed["rejected_files"] == 4 and box.files("rejected") == []
    assert box.files("rejected", "junk") == []
    assert len(box.files("archive")) == 9 and "refused.csv" in {
        r.file_name for r in box.store.ingestions("p", limit=100)}
    assert box.store.pipeline("junk") is not None

    # A season on: originals, the records of refused and duplicate files, events and jobs.
    removed = box.housekeeping.apply_retention(now + 91 * DAY)
    assert box.files("archive") == [] and box.files("archive", "fs") == []
    names = {r.file_name for r in box.store.ingestions("p", limit=100)}
    assert names == {f"d{v}.csv" for v in range(2, 9)}       # accepted: with their data
    assert box.store.events(limit=10) == [] and box.store.jobs("p") == []
    # The stray folder's pipeline held nothing any more: forgotten, its folders removed.
    assert removed["pipelines"] == 1 and box.store.pipeline("junk") is None
    assert not (box.state.rejected / "junk").exists()
    # What waits in the inbox or is being ingested is never touched.
    assert (box.state.inbox / "p" / "waiting.csv").exists()
    assert (box.state.processing / "p" / "1__claimed.csv").exists()
    box.trainer.shutdown()


def test_retention_settings_apply_on_reload():
    from appliance.daemon.lifecycle import is_live

    assert all(is_live(f"retention.{k}") for k in ("events_days", "archive_days",
                                                    "models_keep", "datasets_keep"))


def test_retention_never_follows_a_link(tmp_path):
    box = Box(tmp_path / "s", {"retention": {"rejected_days": 1}})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.csv").write_bytes(b"precious")
    link = box.state.inbox / "p" / "link.csv"
    link.parent.mkdir()
    link.symlink_to(outside / "keep.csv")
    claimed = box.state.pipeline_dir(box.state.processing, "p") / f"{time.time_ns()}__link.csv"
    link.rename(claimed)
    assert box.ingester.process(claimed, "p").record.code == "not_a_regular_file"
    (box.state.rejected / "evil").symlink_to(outside)        # a linked pipeline folder
    box.housekeeping.apply_retention(time.time() + 2 * DAY)
    assert box.files("rejected") == []                       # the link itself went
    assert (outside / "keep.csv").read_bytes() == b"precious"
    box.trainer.shutdown()


# --- deleting a pipeline, through the daemon ---------------------------------------------


@pytest.mark.timeout(180)
def test_pipeline_delete_from_the_cli_and_the_api(trained_template, tmp_path, start_daemon):
    root = copy_state(trained_template, tmp_path / "state")
    daemon = start_daemon(root)
    daemon.wait_ready_model("machines", 1)
    junk = tmp_path / "notes.txt"
    junk.write_text("not data")
    drop(root, "junk", junk)
    wait_for(lambda: daemon.get("/v1/pipelines/junk").status_code == 200
             and (root / "rejected/junk/notes.txt").exists(), timeout=30,
             what="the stray file to make a pipeline")
    runner = CliRunner()
    args = ["--state-dir", str(root)]

    # Asked first; "no" deletes nothing.
    out = runner.invoke(cli, ["pipeline", "delete", "junk", *args], input="n\n")
    assert out.exit_code == 1 and "Delete pipeline `junk`" in out.output, out.output
    assert daemon.get("/v1/pipelines/junk").status_code == 200
    # The API needs the admin token.
    assert daemon.http.delete("/v1/pipelines/junk").status_code == 401
    out = runner.invoke(cli, ["pipeline", "delete", "junk", *args], input="y\n")
    assert out.exit_code == 0 and "deleted `junk`" in out.output, out.output
    assert daemon.get("/v1/pipelines/junk").status_code == 404
    assert "junk" not in [p["name"] for p in daemon.get("/v1/pipelines").json()["pipelines"]]
    for area in ("inbox", "processing", "archive", "rejected", "datasets", "models"):
        assert not (root / area / "junk").exists(), area
    out = runner.invoke(cli, ["pipeline", "delete", "junk", "--yes", *args])
    assert out.exit_code == 1 and "404" in out.output

    # A pipeline that serves: refused without --force, and nothing deleted.
    out = runner.invoke(cli, ["pipeline", "delete", "machines", "--yes", *args])
    assert out.exit_code == 1 and "409" in out.output and "--force" in out.output, out.output
    assert daemon.get("/ready").json()["models"] == {"machines": 1}
    out = runner.invoke(cli, ["pipeline", "delete", "machines", "--yes", "--force", *args])
    assert out.exit_code == 0, out.output
    assert "1 data set versions, 1 models" in out.output and "stays declared" in out.output
    # Declared in appliance.toml: listed again with nothing; its folders and rows are gone.
    detail = daemon.get("/v1/pipelines/machines").json()
    assert detail["status"] == "waiting_for_data" and detail["datasets"] == 0
    assert detail["production"] is None and detail["models"] == 0 and detail["ingestions"] == {}
    assert daemon.get("/v1/pipelines/machines/models").json()["models"] == []
    resp = daemon.post("/v1/pipelines/machines/predict", json={"rows": [{"rpm": 1}]})
    assert resp.status_code == 503
    for area in ("archive", "datasets", "models"):
        assert not (root / area / "machines").exists(), area
    with sqlite3.connect(root / "appliance.db") as db:
        for table in ("datasets", "models", "ingestions", "jobs", "predictions"):
            n = db.execute(f"SELECT COUNT(*) FROM {table} WHERE pipeline = 'machines'")
            assert n.fetchone()[0] == 0, table
    kinds = [e["kind"] for e in daemon.get("/v1/events?pipeline=machines").json()["events"]]
    assert kinds == ["pipeline_deleted"]

    # It starts afresh from the next file.
    drop(root, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1)
    assert daemon.get("/v1/pipelines/machines").json()["datasets"] == 1
    shutil.rmtree(root / "inbox", ignore_errors=True)  # (nothing left for the teardown)


def test_a_pipeline_that_trains_is_not_deleted(tmp_path):
    box = Box(tmp_path / "s", {})
    frame = pl.DataFrame({"x": [float(i) for i in range(400)],
                          "target": [i % 2 for i in range(400)]})
    box.ingest("p", "d.csv", frame.write_csv().encode())
    import threading

    release = threading.Event()
    box.trainer.train_and_gate = lambda *a, **k: release.wait(30)  # holds the run open
    box.trainer.request("p", "manual")
    wait_for(lambda: box.trainer.busy("p"), timeout=10)
    from appliance.core import ApplianceError

    with pytest.raises(ApplianceError) as err:
        box.housekeeping.delete_pipeline("p")
    assert err.value.status == 409 and err.value.code == "pipeline_training"
    assert box.store.datasets("p") and box.files("archive") == ["d.csv"]
    release.set()
    box.trainer.shutdown()
