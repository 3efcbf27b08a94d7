"""The SQLite store: WAL, a schema version, migrations that run once, the state layout."""

from __future__ import annotations

import os
import sqlite3
import stat

import sqlite_utils

from appliance.core import StateDir
from appliance.store import SCHEMA_VERSION, Store
from appliance.store.migrations import migrations


def test_state_dir_layout_and_token(tmp_path):
    state = StateDir(tmp_path / "s")
    state.create()
    for sub in ("inbox", "archive", "rejected", "datasets", "models"):
        assert (state.root / sub).is_dir()
    token = state.token_file.read_text().strip()
    assert len(token) >= 43  # 256 bits, URL-safe base64
    assert stat.S_IMODE(os.stat(state.token_file).st_mode) == 0o600
    state.create()
    assert state.token_file.read_text().strip() == token


def test_wal_schema_version_and_migrations_once(tmp_path):
    path = tmp_path / "a.db"
    store = Store.open(path)
    assert store.journal_mode() == "wal"
    assert store.schema_version() == SCHEMA_VERSION
    store.ensure_pipeline("p")
    store.close()
    store = Store.open(path)  # migrations already applied: nothing runs twice
    assert [p.name for p in store.pipelines()] == ["p"]
    store.close()
    applied = [name for (name,) in sqlite3.connect(path).execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = 'appliance'"
    ).fetchall()]
    assert applied == [m.name for m in migrations.pending(sqlite_utils.Database(memory=True))]
    assert applied[0] == "0001_initial" and len(set(applied)) == len(applied)
    assert len(applied) == SCHEMA_VERSION


def test_one_production_model_per_pipeline(tmp_path):
    store = Store.open(tmp_path / "a.db")
    for v in (1, 2):
        store.add_model(pipeline="p", version=v, task="binary", path=f"models/p/{v}",
                        model_sha256="x", meta_sha256="y", metrics={}, lineage={})
    store.set_production("p", 1, "first")
    store.set_production("p", 2, "better")
    stages = {m.version: m.stage for m in store.models("p")}
    assert stages == {1: "archived", 2: "production"}
    assert store.production_model("p").version == 2


def test_ingestion_and_dataset_version_are_recorded_together(tmp_path):
    store = Store.open(tmp_path / "a.db")
    a = store.record_ingestion(pipeline="p", file_name="a.csv", status="accepted",
                               received_at="t", dataset=("datasets/p/v1", 10, "h1"))
    b = store.record_ingestion(pipeline="p", file_name="b.csv", status="accepted",
                               received_at="t", dataset=("datasets/p/v2", 5, "h2"))
    assert (a.dataset_version, b.dataset_version) == (1, 2)
    assert store.rows_since("p", 1) == 5


def test_prediction_log_and_feedback_join(tmp_path):
    store = Store.open(tmp_path / "a.db")
    store.insert_predictions([
        ("a1", "p", 100.0, 1, "0.9", '{"x": 1}'),
        ("a2", "p", 101.0, 1, "0.2", None),
        ("b1", "q", 102.0, 3, "0.5", '{"x": 2}'),
    ])
    assert store.count_predictions("p") == 2
    assert store.prediction_inputs("p", 0) == [(100.0, 1, {"x": 1}, 0.9)]
    assert store.add_feedback("p", [("a1", 1), ("a2", 0), ("zz", 1)]) == 3
    joined = store.feedback_joined("p")
    assert [(j[0], j[3], j[4]) for j in joined] == [("a1", 0.9, 1), ("a2", 0.2, 0)]
