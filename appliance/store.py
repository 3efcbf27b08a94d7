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

SCHEMA_VERSION = 2

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


def monotonic_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)
