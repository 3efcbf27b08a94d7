"""SQLite: the schema, its migrations and every query the appliance makes.

One file in WAL mode, written through sqlite-utils. Every other module goes through the
methods of :class:`Store`; none of them writes SQL. One connection is shared by the
daemon's threads behind a lock: writes are small and short, and WAL lets readers in other
processes (``sqlite3``, backups) read while the daemon writes.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils
from sqlite_utils.migrations import Migrations

SCHEMA_VERSION = 4  # the number of migrations; a test keeps them in step
ROLLUP_SECONDS = 3600.0  # monitoring roll-ups are hourly; shorter rows are raw

migrations = Migrations("appliance")


@migrations(name="0001_initial")
def _m0001(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE pipelines (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            schema_json TEXT,
            task TEXT
        )""")
    db.execute("""
        CREATE TABLE ingestions (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            file_name TEXT NOT NULL,
            sha256 TEXT,
            size_bytes INTEGER,
            rows INTEGER,
            columns INTEGER,
            status TEXT NOT NULL,           -- accepted | rejected | duplicate
            code TEXT,
            reason TEXT,
            details_json TEXT,
            warnings_json TEXT NOT NULL DEFAULT '[]',
            dataset_version INTEGER,
            dataset_path TEXT,
            stored_as TEXT,
            received_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            duration_ms REAL
        )""")
    db.execute("CREATE INDEX ingestions_pipeline ON ingestions (pipeline, id)")
    db.execute("CREATE INDEX ingestions_sha ON ingestions (pipeline, sha256)")
    db.execute("""
        CREATE TABLE datasets (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            path TEXT NOT NULL,
            rows INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            ingestion_id INTEGER,
            created_at TEXT NOT NULL,
            PRIMARY KEY (pipeline, version)
        )""")
    db.execute("""
        CREATE TABLE models (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            stage TEXT NOT NULL,            -- candidate | production | archived | rejected
            task TEXT NOT NULL,
            path TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            meta_sha256 TEXT NOT NULL,
            metrics_json TEXT NOT NULL,
            lineage_json TEXT NOT NULL,
            decision TEXT,
            created_at TEXT NOT NULL,
            promoted_at TEXT,
            PRIMARY KEY (pipeline, version)
        )""")
    db.execute("""
        CREATE UNIQUE INDEX models_one_production ON models (pipeline)
        WHERE stage = 'production'""")
    db.execute("""
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            kind TEXT NOT NULL,
            level TEXT NOT NULL,
            pipeline TEXT,
            message TEXT NOT NULL,
            details_json TEXT NOT NULL DEFAULT '{}'
        )""")
    db.execute("CREATE INDEX events_pipeline ON events (pipeline, id)")
    db.execute("""
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            kind TEXT NOT NULL,
            trigger TEXT NOT NULL,
            status TEXT NOT NULL,           -- running | succeeded | failed | cancelled
            started_at TEXT NOT NULL,
            finished_at TEXT,
            model_version INTEGER,
            error TEXT
        )""")
    db.execute("CREATE INDEX jobs_pipeline ON jobs (pipeline, id)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations(name="0002_prediction_log_and_feedback")
def _m0002(db: sqlite_utils.Database) -> None:
    # Every prediction served; ``inputs`` is kept only for the sampled ones (for drift).
    db.execute("""
        CREATE TABLE predictions (
            id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            ts REAL NOT NULL,               -- unix seconds
            model_version INTEGER NOT NULL,
            output TEXT NOT NULL,           -- JSON, as answered
            inputs TEXT                     -- JSON row, for sampled predictions only
        )""")
    db.execute("CREATE INDEX predictions_pipeline_ts ON predictions (pipeline, ts)")
    # True outcomes of earlier predictions, from feedback files.
    db.execute("""
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            prediction_id TEXT NOT NULL,
            outcome TEXT NOT NULL,          -- JSON value
            received_at REAL NOT NULL,
            ingestion_id INTEGER
        )""")
    db.execute("CREATE INDEX feedback_prediction ON feedback (pipeline, prediction_id)")


@migrations(name="0003_issue6_monitoring")
def _m0003_monitoring(db: sqlite_utils.Database) -> None:
    # Request metrics per pipeline: raw windows (seconds = 10) and hourly roll-ups
    # (seconds = 3600), merged as each raw window is written.
    db.execute("""
        CREATE TABLE request_windows (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            seconds REAL NOT NULL,
            start REAL NOT NULL,            -- unix seconds
            requests INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            errors_4xx INTEGER NOT NULL,
            errors_5xx INTEGER NOT NULL,
            latency_sum REAL NOT NULL,      -- seconds
            buckets TEXT NOT NULL,          -- JSON counts per latency bucket (monitor.py)
            UNIQUE (pipeline, seconds, start)
        )""")
    db.execute("CREATE INDEX request_windows_age ON request_windows (seconds, start)")
    # Process and box resources: raw samples and hourly roll-ups (the worst of the hour).
    db.execute("""
        CREATE TABLE resource_samples (
            id INTEGER PRIMARY KEY,
            seconds REAL NOT NULL,
            ts REAL NOT NULL,
            samples INTEGER NOT NULL,
            process_cpu_percent REAL NOT NULL,
            process_rss_bytes INTEGER NOT NULL,
            process_threads INTEGER NOT NULL,
            process_open_files INTEGER NOT NULL,
            cpu_percent REAL NOT NULL,
            memory_available_bytes INTEGER NOT NULL,
            memory_percent REAL NOT NULL,
            load_1m REAL NOT NULL,
            disk_free_bytes INTEGER NOT NULL,
            temperature_c REAL,
            UNIQUE (seconds, ts)
        )""")
    db.execute("""
        CREATE TABLE drift_reports (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            ts REAL NOT NULL,
            source TEXT NOT NULL,           -- predictions | ingestion
            model_version INTEGER,
            rows INTEGER NOT NULL,
            drifted INTEGER NOT NULL,
            drifted_share REAL NOT NULL,
            report TEXT NOT NULL            -- the DriftReport as JSON
        )""")
    db.execute("CREATE INDEX drift_reports_pipeline ON drift_reports (pipeline, id)")
    db.execute("CREATE INDEX drift_reports_age ON drift_reports (ts)")
    db.execute("""
        CREATE TABLE live_performance (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            model_version INTEGER NOT NULL,
            seconds REAL NOT NULL,
            start REAL NOT NULL,            -- window of prediction times
            metric TEXT NOT NULL,
            value REAL NOT NULL,
            labelled INTEGER NOT NULL,
            validation_value REAL,
            computed_at REAL NOT NULL,
            UNIQUE (pipeline, model_version, seconds, start)
        )""")
    db.execute("CREATE INDEX live_performance_age ON live_performance (start)")
    db.execute("CREATE INDEX feedback_age ON feedback (received_at)")


@migrations(name="0010_issue10_online_features")
def _m0010(db: sqlite_utils.Database) -> None:
    # The online store: the latest values per entity key of every feature set.
    db.execute("""
        CREATE TABLE online_features (
            feature_set TEXT NOT NULL,
            key TEXT NOT NULL,
            values_json TEXT NOT NULL,
            event_time TEXT,                -- the row's own time, when the set has one
            dataset_version INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (feature_set, key)
        )""")


_PREDICTIONS_PER_INSERT = 100  # 600 parameters, far under SQLite's limit of 32766


@functools.cache
def _insert_predictions_sql(n: int) -> str:
    return ("INSERT OR IGNORE INTO predictions (id, pipeline, ts, model_version, output, inputs)"
            " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- records: what readers get back ------------------------------------------------------


class PipelineRecord(msgspec.Struct, kw_only=True):
    name: str
    created_at: str
    schema: dict[str, str] | None
    task: str | None


class IngestionRecord(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    file_name: str
    sha256: str | None
    size_bytes: int | None
    rows: int | None
    columns: int | None
    status: str
    code: str | None
    reason: str | None
    details: dict[str, Any]
    warnings: list[str]
    dataset_version: int | None
    dataset_path: str | None
    stored_as: str | None
    received_at: str
    finished_at: str
    duration_ms: float | None


class DatasetRecord(msgspec.Struct, kw_only=True):
    pipeline: str
    version: int
    path: str
    rows: int
    sha256: str
    ingestion_id: int | None
    created_at: str


class ModelRecord(msgspec.Struct, kw_only=True):
    pipeline: str
    version: int
    stage: str
    task: str
    path: str
    model_sha256: str
    meta_sha256: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    decision: str | None
    created_at: str
    promoted_at: str | None


class EventRecord(msgspec.Struct, kw_only=True):
    id: int
    ts: str
    kind: str
    level: str
    pipeline: str | None
    message: str
    details: dict[str, Any]


class JobRecord(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    kind: str
    trigger: str
    status: str
    started_at: str
    finished_at: str | None
    model_version: int | None
    error: str | None


class WindowRecord(msgspec.Struct, kw_only=True):
    """Request metrics of one pipeline over one window (raw) or hour (roll-up)."""
    pipeline: str
    seconds: float
    start: float
    requests: int
    rows: int
    errors_4xx: int
    errors_5xx: int
    latency_sum: float
    buckets: list[int]


class ResourceRecord(msgspec.Struct, kw_only=True):
    seconds: float
    ts: float
    samples: int = 1
    process_cpu_percent: float
    process_rss_bytes: int
    process_threads: int
    process_open_files: int
    cpu_percent: float
    memory_available_bytes: int
    memory_percent: float
    load_1m: float
    disk_free_bytes: int
    temperature_c: float | None = None


class DriftRecord(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    ts: float
    source: str
    model_version: int | None
    rows: int
    drifted: bool
    drifted_share: float
    report: dict[str, Any]


class LivePerformanceRecord(msgspec.Struct, kw_only=True):
    pipeline: str
    model_version: int
    seconds: float
    start: float
    metric: str
    value: float
    labelled: int
    validation_value: float | None
    computed_at: float


class CountRecord(msgspec.Struct, kw_only=True):
    """How many ingestions or jobs ended how, and how long they took in total."""
    pipeline: str
    kind: str
    status: str
    count: int
    seconds: float


def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Store:
    """The appliance's SQLite database. Thread-safe; one instance per process."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> Store:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        store = cls(path, conn)
        with store._lock:
            migrations.apply(store._db)
            store._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [str(SCHEMA_VERSION)],
            )
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _atomic(self) -> Iterator[sqlite_utils.Database]:
        with self._lock, self._db.atomic():
            yield self._db

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # --- meta ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        rows = self._rows("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(rows[0]["value"]) if rows else 0

    def journal_mode(self) -> str:
        return self._rows("PRAGMA journal_mode")[0]["journal_mode"]

    def integrity_ok(self) -> bool:
        return self._rows("PRAGMA integrity_check")[0]["integrity_check"] == "ok"

    # --- pipelines -----------------------------------------------------------------------

    def ensure_pipeline(self, name: str) -> None:
        with self._atomic() as db:
            db.execute(
                "INSERT INTO pipelines (name, created_at) VALUES (?, ?) "
                "ON CONFLICT(name) DO NOTHING",
                [name, now_iso()],
            )

    def set_pipeline_schema(self, name: str, schema: dict[str, str]) -> None:
        with self._atomic() as db:
            db.execute(
                "UPDATE pipelines SET schema_json = ? WHERE name = ?", [_dumps(schema), name]
            )

    def set_pipeline_task(self, name: str, task: str) -> None:
        with self._atomic() as db:
            db.execute("UPDATE pipelines SET task = ? WHERE name = ?", [task, name])

    def pipeline(self, name: str) -> PipelineRecord | None:
        rows = self._rows("SELECT * FROM pipelines WHERE name = ?", [name])
        return self._pipeline(rows[0]) if rows else None

    def pipelines(self) -> list[PipelineRecord]:
        return [self._pipeline(r) for r in self._rows("SELECT * FROM pipelines ORDER BY name")]

    @staticmethod
    def _pipeline(row: dict[str, Any]) -> PipelineRecord:
        return PipelineRecord(
            name=row["name"], created_at=row["created_at"],
            schema=_loads(row["schema_json"], None), task=row["task"],
        )

    # --- ingestions and datasets ---------------------------------------------------------

    def record_ingestion(
        self,
        *,
        pipeline: str,
        file_name: str,
        status: str,
        received_at: str,
        sha256: str | None = None,
        size_bytes: int | None = None,
        rows: int | None = None,
        columns: int | None = None,
        code: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        warnings: list[str] | None = None,
        stored_as: str | None = None,
        duration_ms: float | None = None,
        dataset: tuple[str, int, str] | None = None,
    ) -> IngestionRecord:
        """Record one ingestion; with ``dataset=(path, rows, sha256)`` also register the
        data set version, in the same transaction, and return its number on the record."""
        with self._atomic() as db:
            version = None
            dataset_path = None
            cursor = db.execute(
                "INSERT INTO ingestions (pipeline, file_name, sha256, size_bytes, rows, columns,"
                " status, code, reason, details_json, warnings_json, stored_as, received_at,"
                " finished_at, duration_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [pipeline, file_name, sha256, size_bytes, rows, columns, status, code, reason,
                 _dumps(details or {}), _dumps(warnings or []), stored_as, received_at,
                 now_iso(), duration_ms],
            )
            ingestion_id = cursor.lastrowid
            if dataset is not None:
                dataset_path, ds_rows, ds_sha = dataset
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM datasets WHERE pipeline = ?",
                    [pipeline],
                ).fetchone()[0]
                db.execute(
                    "INSERT INTO datasets (pipeline, version, path, rows, sha256, ingestion_id,"
                    " created_at) VALUES (?,?,?,?,?,?,?)",
                    [pipeline, version, dataset_path, ds_rows, ds_sha, ingestion_id, now_iso()],
                )
                db.execute(
                    "UPDATE ingestions SET dataset_version = ?, dataset_path = ? WHERE id = ?",
                    [version, dataset_path, ingestion_id],
                )
        return self.ingestion(ingestion_id)  # type: ignore[return-value]

    def next_dataset_version(self, pipeline: str) -> int:
        rows = self._rows(
            "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM datasets WHERE pipeline = ?",
            [pipeline],
        )
        return rows[0]["v"]

    def ingestion(self, ingestion_id: int) -> IngestionRecord | None:
        rows = self._rows("SELECT * FROM ingestions WHERE id = ?", [ingestion_id])
        return self._ingestion(rows[0]) if rows else None

    def ingestions(self, pipeline: str, limit: int = 100) -> list[IngestionRecord]:
        rows = self._rows(
            "SELECT * FROM ingestions WHERE pipeline = ? ORDER BY id DESC LIMIT ?",
            [pipeline, limit],
        )
        return [self._ingestion(r) for r in rows]

    def ingestion_by_claim(self, pipeline: str, stored_as: str) -> IngestionRecord | None:
        """The record of a claimed file, if it was already recorded (crash recovery)."""
        rows = self._rows(
            "SELECT * FROM ingestions WHERE pipeline = ? AND stored_as = ? LIMIT 1",
            [pipeline, stored_as],
        )
        return self._ingestion(rows[0]) if rows else None

    def accepted_with_hash(self, pipeline: str, sha256: str) -> IngestionRecord | None:
        rows = self._rows(
            "SELECT * FROM ingestions WHERE pipeline = ? AND sha256 = ? AND status = 'accepted'"
            " ORDER BY id LIMIT 1",
            [pipeline, sha256],
        )
        return self._ingestion(rows[0]) if rows else None

    @staticmethod
    def _ingestion(row: dict[str, Any]) -> IngestionRecord:
        row = dict(row)
        row["details"] = _loads(row.pop("details_json"), {})
        row["warnings"] = _loads(row.pop("warnings_json"), [])
        return msgspec.convert(row, IngestionRecord)

    def datasets(self, pipeline: str) -> list[DatasetRecord]:
        rows = self._rows(
            "SELECT * FROM datasets WHERE pipeline = ? ORDER BY version", [pipeline]
        )
        return [msgspec.convert(r, DatasetRecord) for r in rows]

    def rows_since(self, pipeline: str, after_version: int) -> int:
        rows = self._rows(
            "SELECT COALESCE(SUM(rows), 0) AS n FROM datasets WHERE pipeline = ? AND version > ?",
            [pipeline, after_version],
        )
        return rows[0]["n"]

    # --- models --------------------------------------------------------------------------

    def max_model_version(self, pipeline: str) -> int:
        rows = self._rows(
            "SELECT COALESCE(MAX(version), 0) AS v FROM models WHERE pipeline = ?", [pipeline]
        )
        return rows[0]["v"]

    def add_model(
        self,
        *,
        pipeline: str,
        version: int,
        task: str,
        path: str,
        model_sha256: str,
        meta_sha256: str,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
    ) -> ModelRecord:
        with self._atomic() as db:
            db.execute(
                "INSERT INTO models (pipeline, version, stage, task, path, model_sha256,"
                " meta_sha256, metrics_json, lineage_json, created_at)"
                " VALUES (?, ?, 'candidate', ?, ?, ?, ?, ?, ?, ?)",
                [pipeline, version, task, path, model_sha256, meta_sha256, _dumps(metrics),
                 _dumps(lineage), now_iso()],
            )
        return self.model(pipeline, version)  # type: ignore[return-value]

    def model(self, pipeline: str, version: int) -> ModelRecord | None:
        rows = self._rows(
            "SELECT * FROM models WHERE pipeline = ? AND version = ?", [pipeline, version]
        )
        return self._model(rows[0]) if rows else None

    def models(self, pipeline: str) -> list[ModelRecord]:
        rows = self._rows(
            "SELECT * FROM models WHERE pipeline = ? ORDER BY version DESC", [pipeline]
        )
        return [self._model(r) for r in rows]

    def production_model(self, pipeline: str) -> ModelRecord | None:
        rows = self._rows(
            "SELECT * FROM models WHERE pipeline = ? AND stage = 'production'", [pipeline]
        )
        return self._model(rows[0]) if rows else None

    def model_versions(self, pipeline: str) -> set[int]:
        rows = self._rows("SELECT version FROM models WHERE pipeline = ?", [pipeline])
        return {r["version"] for r in rows}

    def set_production(self, pipeline: str, version: int, decision: str) -> None:
        """Make ``version`` the one production model; the previous one is archived."""
        with self._atomic() as db:
            db.execute(
                "UPDATE models SET stage = 'archived' WHERE pipeline = ? AND stage = 'production'",
                [pipeline],
            )
            db.execute(
                "UPDATE models SET stage = 'production', decision = ?, promoted_at = ?"
                " WHERE pipeline = ? AND version = ?",
                [decision, now_iso(), pipeline, version],
            )

    def set_model_stage(self, pipeline: str, version: int, stage: str, decision: str) -> None:
        with self._atomic() as db:
            db.execute(
                "UPDATE models SET stage = ?, decision = ? WHERE pipeline = ? AND version = ?",
                [stage, decision, pipeline, version],
            )

    @staticmethod
    def _model(row: dict[str, Any]) -> ModelRecord:
        row = dict(row)
        row["metrics"] = _loads(row.pop("metrics_json"), {})
        row["lineage"] = _loads(row.pop("lineage_json"), {})
        return msgspec.convert(row, ModelRecord)

    # --- events --------------------------------------------------------------------------

    def add_event(
        self, kind: str, level: str, message: str, pipeline: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        with self._atomic() as db:
            cursor = db.execute(
                "INSERT INTO events (ts, kind, level, pipeline, message, details_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [now_iso(), kind, level, pipeline, message, _dumps(details or {})],
            )
            return cursor.lastrowid  # type: ignore[return-value]

    def events(
        self, *, pipeline: str | None = None, after_id: int = 0, limit: int = 200
    ) -> list[EventRecord]:
        sql = "SELECT * FROM events WHERE id > ?"
        params: list[Any] = [after_id]
        if pipeline is not None:
            sql += " AND pipeline = ?"
            params.append(pipeline)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        out = []
        for row in self._rows(sql, params):
            row["details"] = _loads(row.pop("details_json"), {})
            out.append(msgspec.convert(row, EventRecord))
        return out

    # --- prediction log and feedback ----------------------------------------------------

    def insert_predictions(
        self, rows: list[tuple[str, str, float, int, str, str | None]]
    ) -> None:
        """Write a batch of (id, pipeline, ts, model_version, output_json, inputs_json|None)
        in one transaction."""
        if not rows:
            return
        # Many rows per statement: one sqlite3_step, so one release of the GIL, per 100 rows
        # instead of per row; with a row each, the writer thread and the event loop that
        # serves predictions hand the GIL back and forth thousands of times a second.
        with self._atomic() as db:
            for start in range(0, len(rows), _PREDICTIONS_PER_INSERT):
                chunk = rows[start:start + _PREDICTIONS_PER_INSERT]
                db.conn.execute(_insert_predictions_sql(len(chunk)),
                                [value for row in chunk for value in row])

    def prediction_inputs(
        self, pipeline: str, since_ts: float, limit: int = 10_000
    ) -> list[tuple[float, int, dict[str, Any], Any]]:
        """The sampled inputs since ``since_ts``, newest first: (ts, version, row, output)."""
        rows = self._rows(
            "SELECT ts, model_version, inputs, output FROM predictions WHERE pipeline = ?"
            " AND ts >= ? AND inputs IS NOT NULL ORDER BY ts DESC LIMIT ?",
            [pipeline, since_ts, limit],
        )
        return [(r["ts"], r["model_version"], json.loads(r["inputs"]), json.loads(r["output"]))
                for r in rows]

    def count_predictions(self, pipeline: str) -> int:
        return self._rows(
            "SELECT COUNT(*) AS n FROM predictions WHERE pipeline = ?", [pipeline]
        )[0]["n"]

    def add_feedback(
        self, pipeline: str, outcomes: list[tuple[str, Any]], ingestion_id: int | None = None
    ) -> int:
        """Record (prediction_id, outcome) pairs; returns how many were written."""
        now = time.time()
        with self._atomic() as db:
            db.conn.executemany(
                "INSERT INTO feedback (pipeline, prediction_id, outcome, received_at,"
                " ingestion_id) VALUES (?, ?, ?, ?, ?)",
                [(pipeline, pid, _dumps(outcome), now, ingestion_id) for pid, outcome in outcomes],
            )
        return len(outcomes)

    def feedback_joined(
        self, pipeline: str, since_ts: float = 0.0
    ) -> list[tuple[str, float, int, Any, Any]]:
        """Feedback joined to its predictions: (prediction_id, predicted_ts, model_version,
        output, outcome), for predictions made since ``since_ts``."""
        rows = self._rows(
            "SELECT p.id, p.ts, p.model_version, p.output, f.outcome FROM feedback f"
            " JOIN predictions p ON p.id = f.prediction_id AND p.pipeline = f.pipeline"
            " WHERE f.pipeline = ? AND p.ts >= ? ORDER BY p.ts",
            [pipeline, since_ts],
        )
        return [(r["id"], r["ts"], r["model_version"], json.loads(r["output"]),
                 json.loads(r["outcome"])) for r in rows]

    # --- ingestion: duplicates and feedback files --------------------------------------

    def taken_with_hash(self, pipeline: str, sha256: str) -> IngestionRecord | None:
        """The first ingestion that took a file with this content (as data or feedback)."""
        rows = self._rows(
            "SELECT * FROM ingestions WHERE pipeline = ? AND sha256 = ?"
            " AND status IN ('accepted', 'feedback') ORDER BY id LIMIT 1",
            [pipeline, sha256],
        )
        return self._ingestion(rows[0]) if rows else None

    def record_feedback_ingestion(
        self, outcomes: list[tuple[str, Any]], **ingestion: Any
    ) -> IngestionRecord:
        """Record a feedback file and its (prediction_id, outcome) pairs in one transaction,
        so a crash leaves either both or neither."""
        with self._atomic():
            record = self.record_ingestion(status="feedback", **ingestion)
            self.add_feedback(record.pipeline, outcomes, record.id)
        return record

    def count_known_predictions(self, pipeline: str, ids: list[str]) -> int:
        """How many of ``ids`` are in the prediction log of ``pipeline``."""
        known = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            known += self._rows(
                f"SELECT COUNT(*) AS n FROM predictions WHERE pipeline = ? AND id IN ({marks})",
                [pipeline, *chunk],
            )[0]["n"]
        return known


    # --- online feature store ------------------------------------------------------------

    def upsert_online_features(
        self, feature_set: str, entries: dict[str, dict[str, Any]], dataset_version: int,
        timestamp: str | None,
    ) -> int:
        """Store the newest values per key. With a time column, a stored row is replaced
        only by one at least as new (a late file can't roll a key back)."""
        now = now_iso()
        rows = [
            (feature_set, key, _dumps(values),
             str(values.get(timestamp)) if timestamp and values.get(timestamp) is not None
             else None, dataset_version, now)
            for key, values in entries.items()
        ]
        with self._atomic() as db:
            db.conn.executemany(
                "INSERT INTO online_features (feature_set, key, values_json, event_time,"
                " dataset_version, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(feature_set, key) DO UPDATE SET"
                " values_json = excluded.values_json, event_time = excluded.event_time,"
                " dataset_version = excluded.dataset_version, updated_at = excluded.updated_at"
                " WHERE excluded.event_time IS NULL OR online_features.event_time IS NULL"
                " OR excluded.event_time >= online_features.event_time",
                rows,
            )
        return len(rows)

    def online_features(self, feature_set: str) -> dict[str, dict[str, Any]]:
        rows = self._rows(
            "SELECT key, values_json FROM online_features WHERE feature_set = ?",
            [feature_set],
        )
        return {r["key"]: json.loads(r["values_json"]) for r in rows}

    def online_feature(self, feature_set: str, key: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT values_json, event_time, dataset_version, updated_at FROM online_features"
            " WHERE feature_set = ? AND key = ?",
            [feature_set, key],
        )
        if not rows:
            return None
        r = rows[0]
        return {"values": json.loads(r["values_json"]), "event_time": r["event_time"],
                "dataset_version": r["dataset_version"], "updated_at": r["updated_at"]}

    def online_summary(self, feature_set: str) -> dict[str, Any]:
        row = self._rows(
            "SELECT COUNT(*) AS keys, MAX(updated_at) AS updated_at,"
            " MAX(event_time) AS newest_event FROM online_features WHERE feature_set = ?",
            [feature_set],
        )[0]
        return row

    # --- jobs ----------------------------------------------------------------------------

    def start_job(self, pipeline: str, kind: str, trigger: str) -> int:
        with self._atomic() as db:
            cursor = db.execute(
                "INSERT INTO jobs (pipeline, kind, trigger, status, started_at)"
                " VALUES (?, ?, ?, 'running', ?)",
                [pipeline, kind, trigger, now_iso()],
            )
            return cursor.lastrowid  # type: ignore[return-value]

    def finish_job(
        self, job_id: int, status: str, model_version: int | None = None, error: str | None = None
    ) -> None:
        with self._atomic() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, model_version = ?, error = ?"
                " WHERE id = ?",
                [status, now_iso(), model_version, error, job_id],
            )

    def abandon_running_jobs(self, error: str) -> int:
        """Mark jobs left 'running' by a previous process as failed; returns how many."""
        with self._atomic() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?"
                " WHERE status = 'running'",
                [now_iso(), error],
            )
            return cursor.rowcount

    def jobs(self, pipeline: str, limit: int = 50) -> list[JobRecord]:
        rows = self._rows(
            "SELECT * FROM jobs WHERE pipeline = ? ORDER BY id DESC LIMIT ?", [pipeline, limit]
        )
        return [msgspec.convert(r, JobRecord) for r in rows]

    # --- read-only access and backups (doctor, backup) -----------------------------------

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open without migrating or writing, while the daemon may run (``doctor``,
        ``backup``). When no ``-wal`` file exists (no daemon has it open, and the last one
        stopped cleanly) the file is opened immutable, so SQLite creates no ``-wal``/``-shm``
        files: made by root, they would lock out the service's own user."""
        wal = path.with_name(path.name + "-wal")
        flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        conn = sqlite3.connect(f"file:{path}?{flags}", uri=True, check_same_thread=False,
                               timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        return cls(path, conn)

    def quick_check(self) -> str:
        """``ok``, or the first problems SQLite's quick_check finds."""
        rows = self._rows("PRAGMA quick_check")
        problems = [r["quick_check"] for r in rows if r["quick_check"] != "ok"]
        return "; ".join(problems[:5]) if problems else "ok"

    def migration_state(self) -> tuple[list[str], list[str]]:
        """(migrations this code has that the file lacks, migrations the file has that this
        code does not know: it was used by a newer release)."""
        known = [m.name for m in migrations.pending(sqlite_utils.Database(memory=True))]
        with self._lock:
            pending = [m.name for m in migrations.pending(self._db)]
            applied = [m.name for m in migrations.applied(self._db)]
        return pending, [name for name in applied if name not in known]

    def backup_to(self, dest: Path) -> None:
        """A consistent copy of the whole database, taken with SQLite's online backup while
        others read and write it."""
        target = sqlite3.connect(dest)
        try:
            with self._lock:
                self._conn.backup(target)
        finally:
            target.close()


    # --- monitoring: request windows, resources, drift, live performance, retention -----

    def write_windows(self, windows: list[WindowRecord],
                      rollup_seconds: float = ROLLUP_SECONDS) -> None:
        """Write raw windows and merge each into its hourly roll-up, in one transaction.
        A window already stored (a restart within the same window) is merged, not lost."""
        if not windows:
            return
        with self._atomic() as db:
            for w in windows:
                self._merge_window(db.conn, w, w.seconds, w.start)
                self._merge_window(db.conn, w, rollup_seconds, w.start - w.start % rollup_seconds)

    @staticmethod
    def _merge_window(conn: sqlite3.Connection, w: WindowRecord, seconds: float,
                      start: float) -> None:
        row = conn.execute(
            "SELECT requests, rows, errors_4xx, errors_5xx, latency_sum, buckets"
            " FROM request_windows WHERE pipeline = ? AND seconds = ? AND start = ?",
            [w.pipeline, seconds, start],
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO request_windows (pipeline, seconds, start, requests, rows,"
                " errors_4xx, errors_5xx, latency_sum, buckets) VALUES (?,?,?,?,?,?,?,?,?)",
                [w.pipeline, seconds, start, w.requests, w.rows, w.errors_4xx, w.errors_5xx,
                 w.latency_sum, _dumps(w.buckets)],
            )
            return
        old = json.loads(row[5])
        merged = ([a + b for a, b in zip(old, w.buckets, strict=True)]
                  if len(old) == len(w.buckets) else w.buckets)
        conn.execute(
            "UPDATE request_windows SET requests = ?, rows = ?, errors_4xx = ?, errors_5xx = ?,"
            " latency_sum = ?, buckets = ? WHERE pipeline = ? AND seconds = ? AND start = ?",
            [row[0] + w.requests, row[1] + w.rows, row[2] + w.errors_4xx,
             row[3] + w.errors_5xx, row[4] + w.latency_sum, _dumps(merged), w.pipeline,
             seconds, start],
        )

    def windows(self, pipeline: str, since: float, until: float = float("inf"),
                rollups: bool = False) -> list[WindowRecord]:
        """Raw windows (or hourly roll-ups) of a pipeline that start in [since, until)."""
        op = ">=" if rollups else "<"
        rows = self._rows(
            "SELECT pipeline, seconds, start, requests, rows, errors_4xx, errors_5xx,"
            " latency_sum, buckets FROM request_windows WHERE pipeline = ?"
            f" AND seconds {op} ? AND start >= ? AND start < ? ORDER BY start",
            [pipeline, ROLLUP_SECONDS, since, min(until, 1e18)],
        )
        for r in rows:
            r["buckets"] = json.loads(r["buckets"])
        return [msgspec.convert(r, WindowRecord) for r in rows]

    _RESOURCE_FIELDS = ("process_cpu_percent", "process_rss_bytes", "process_threads",
                        "process_open_files", "cpu_percent", "memory_available_bytes",
                        "memory_percent", "load_1m", "disk_free_bytes", "temperature_c")
    # How an hour's roll-up keeps each field: the mean of the load, the worst of the rest.
    _RESOURCE_ROLLUP = {
        "process_cpu_percent": "mean", "cpu_percent": "mean", "load_1m": "mean",
        "process_rss_bytes": "max", "process_threads": "max", "process_open_files": "max",
        "memory_percent": "max", "temperature_c": "max",
        "memory_available_bytes": "min", "disk_free_bytes": "min",
    }

    def add_resource_sample(self, sample: ResourceRecord,
                            rollup_seconds: float = ROLLUP_SECONDS) -> None:
        """Write a raw sample and fold it into its hour's roll-up, in one transaction."""
        fields = self._RESOURCE_FIELDS
        values = [getattr(sample, f) for f in fields]
        cols = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        merge = []
        for f in fields:
            how = self._RESOURCE_ROLLUP[f]
            if how == "mean":
                merge.append(f"{f} = ({f} * samples + excluded.{f}) / (samples + 1)")
            else:
                fn = "MAX" if how == "max" else "MIN"
                merge.append(f"{f} = COALESCE({fn}({f}, excluded.{f}), {f}, excluded.{f})")
        hour = sample.ts - sample.ts % rollup_seconds
        with self._atomic() as db:
            db.execute(
                f"INSERT OR REPLACE INTO resource_samples (seconds, ts, samples, {cols})"
                f" VALUES (?, ?, 1, {marks})",
                [sample.seconds, sample.ts, *values],
            )
            db.execute(
                f"INSERT INTO resource_samples (seconds, ts, samples, {cols})"
                f" VALUES (?, ?, 1, {marks}) ON CONFLICT (seconds, ts) DO UPDATE SET"
                f" {', '.join(merge)}, samples = samples + 1",
                [rollup_seconds, hour, *values],
            )

    def resource_samples(self, since: float, until: float = float("inf"),
                         rollups: bool = False) -> list[ResourceRecord]:
        """Raw samples (or hourly roll-ups) taken in [since, until)."""
        op = ">=" if rollups else "<"
        rows = self._rows(
            f"SELECT seconds, ts, samples, {', '.join(self._RESOURCE_FIELDS)}"
            f" FROM resource_samples WHERE seconds {op} ? AND ts >= ? AND ts < ? ORDER BY ts",
            [ROLLUP_SECONDS, since, min(until, 1e18)],
        )
        for r in rows:
            for f in ("process_rss_bytes", "process_threads", "process_open_files",
                      "memory_available_bytes", "disk_free_bytes"):
                r[f] = int(r[f])
        return [msgspec.convert(r, ResourceRecord) for r in rows]

    def add_drift_report(self, *, pipeline: str, ts: float, source: str,
                         model_version: int | None, rows: int, drifted: bool,
                         drifted_share: float, report: dict[str, Any]) -> int:
        with self._atomic() as db:
            cursor = db.execute(
                "INSERT INTO drift_reports (pipeline, ts, source, model_version, rows, drifted,"
                " drifted_share, report) VALUES (?,?,?,?,?,?,?,?)",
                [pipeline, ts, source, model_version, rows, int(drifted), drifted_share,
                 _dumps(report)],
            )
            return cursor.lastrowid  # type: ignore[return-value]

    def drift_reports(self, pipeline: str, limit: int = 100,
                      source: str | None = None) -> list[DriftRecord]:
        """The newest drift reports of a pipeline, newest first."""
        sql = "SELECT * FROM drift_reports WHERE pipeline = ?"
        params: list[Any] = [pipeline]
        if source is not None:
            sql += " AND source = ?"
            params.append(source)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        out = []
        for r in self._rows(sql, params):
            r["report"] = json.loads(r["report"])
            r["drifted"] = bool(r["drifted"])
            out.append(msgspec.convert(r, DriftRecord))
        return out

    def upsert_live_performance(self, rows: list[LivePerformanceRecord]) -> None:
        if not rows:
            return
        with self._atomic() as db:
            db.conn.executemany(
                "INSERT INTO live_performance (pipeline, model_version, seconds, start, metric,"
                " value, labelled, validation_value, computed_at) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (pipeline, model_version, seconds, start) DO UPDATE SET"
                " metric = excluded.metric, value = excluded.value,"
                " labelled = excluded.labelled, validation_value = excluded.validation_value,"
                " computed_at = excluded.computed_at",
                [(r.pipeline, r.model_version, r.seconds, r.start, r.metric, r.value,
                  r.labelled, r.validation_value, r.computed_at) for r in rows],
            )

    def live_performance(self, pipeline: str, since: float) -> list[LivePerformanceRecord]:
        rows = self._rows(
            "SELECT pipeline, model_version, seconds, start, metric, value, labelled,"
            " validation_value, computed_at FROM live_performance WHERE pipeline = ?"
            " AND start >= ? ORDER BY start, model_version",
            [pipeline, since],
        )
        return [msgspec.convert(r, LivePerformanceRecord) for r in rows]

    def ingestion_counts(self) -> list[CountRecord]:
        """Ingestions per pipeline and status, with their total duration."""
        rows = self._rows(
            "SELECT pipeline, 'ingest' AS kind, status, COUNT(*) AS count,"
            " COALESCE(SUM(duration_ms), 0) / 1000.0 AS seconds FROM ingestions"
            " GROUP BY pipeline, status ORDER BY pipeline, status"
        )
        return [msgspec.convert(r, CountRecord) for r in rows]

    def job_counts(self) -> list[CountRecord]:
        """Finished jobs per pipeline, kind and status, with their total duration."""
        rows = self._rows(
            "SELECT pipeline, kind, status, COUNT(*) AS count,"
            " COALESCE(SUM((julianday(finished_at) - julianday(started_at)) * 86400.0), 0)"
            " AS seconds FROM jobs WHERE finished_at IS NOT NULL"
            " GROUP BY pipeline, kind, status ORDER BY pipeline, kind, status"
        )
        return [msgspec.convert(r, CountRecord) for r in rows]

    # Retention deletes in small transactions, so that a large clean-up never holds the
    # store's lock (and the API's reads) for long.

    def _delete_chunk(self, table: str, where: str, params: list[Any], limit: int) -> int:
        with self._atomic() as db:
            cursor = db.execute(
                f"DELETE FROM {table} WHERE rowid IN"
                f" (SELECT rowid FROM {table} WHERE {where} LIMIT ?)",
                [*params, limit],
            )
            return cursor.rowcount

    def delete_windows_before(self, before: float, rollups: bool, limit: int = 5000) -> int:
        """Remove raw windows (or hourly roll-ups) that started before ``before``."""
        op = ">=" if rollups else "<"
        return self._delete_chunk("request_windows", f"seconds {op} ? AND start < ?",
                                  [ROLLUP_SECONDS, before], limit)

    def delete_resource_samples_before(self, before: float, rollups: bool,
                                       limit: int = 5000) -> int:
        op = ">=" if rollups else "<"
        return self._delete_chunk("resource_samples", f"seconds {op} ? AND ts < ?",
                                  [ROLLUP_SECONDS, before], limit)

    def delete_drift_reports_before(self, before: float, limit: int = 5000) -> int:
        return self._delete_chunk("drift_reports", "ts < ?", [before], limit)

    def delete_live_performance_before(self, before: float, limit: int = 5000) -> int:
        return self._delete_chunk("live_performance", "start < ?", [before], limit)

    def delete_feedback_before(self, before: float, limit: int = 5000) -> int:
        return self._delete_chunk("feedback", "received_at < ?", [before], limit)

    def prediction_pipelines(self) -> list[str]:
        return [r["pipeline"] for r in
                self._rows("SELECT DISTINCT pipeline FROM predictions ORDER BY pipeline")]

    def prediction_cutoff(self, pipeline: str, keep: int) -> float | None:
        """The time of the newest prediction beyond the ``keep`` newest, if there are more."""
        rows = self._rows(
            "SELECT ts FROM predictions WHERE pipeline = ? ORDER BY ts DESC LIMIT 1 OFFSET ?",
            [pipeline, keep],
        )
        return rows[0]["ts"] if rows else None

    def delete_predictions_before(self, pipeline: str, before: float, inclusive: bool = False,
                                  limit: int = 5000) -> int:
        op = "<=" if inclusive else "<"
        return self._delete_chunk("predictions", f"pipeline = ? AND ts {op} ?",
                                  [pipeline, before], limit)

    def table_counts(self) -> dict[str, int]:
        """Rows per monitoring table (for status and tests)."""
        out = {}
        for table in ("request_windows", "resource_samples", "drift_reports",
                      "live_performance", "predictions", "feedback"):
            out[table] = self._rows(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
        return out


def monotonic_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)
