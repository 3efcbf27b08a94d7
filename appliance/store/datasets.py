"""Pipelines, ingestions and the data set versions they register, including feedback files
(recorded with their outcomes in one transaction) and the duplicate checks by content."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.store.connection import _dumps, _loads, now_iso
from appliance.store.records import DatasetRecord, IngestionRecord, PipelineRecord

# The statuses of a data set version that training uses (`held` and `discarded` it skips).
TRAINABLE = "('active', 'released')"


class DatasetQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``, and
    ``add_feedback`` of the prediction log for feedback files."""

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
        data set version, in the same transaction, and return its number on the record.
        The commit is durable (fsynced): the file moves out of ``processing/`` after it."""
        with self._atomic(durable=True) as db:
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

    def ingestion_status_counts(self, pipeline: str) -> dict[str, int]:
        """How many files of the pipeline ended in each status (from an index)."""
        rows = self._rows(
            "SELECT status, COUNT(*) AS n FROM ingestions WHERE pipeline = ? GROUP BY status",
            [pipeline],
        )
        return {r["status"]: r["n"] for r in rows}

    def last_ingestion_at(self, pipeline: str) -> str | None:
        """When the pipeline's newest ingestion finished."""
        rows = self._rows(
            "SELECT finished_at FROM ingestions WHERE pipeline = ? ORDER BY id DESC LIMIT 1",
            [pipeline],
        )
        return rows[0]["finished_at"] if rows else None

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

    def dataset_totals(self, pipeline: str) -> tuple[int, int, int]:
        """(data set versions, rows in them, versions held) of a pipeline, counted by
        SQLite."""
        row = self._rows(
            "SELECT COUNT(*) AS n, COALESCE(SUM(rows), 0) AS total,"
            " COALESCE(SUM(status = 'held'), 0) AS held FROM datasets WHERE pipeline = ?",
            [pipeline],
        )[0]
        return row["n"], row["total"], row["held"]

    def held_versions(self, pipeline: str) -> list[int]:
        """The data set versions held for an operator (suspect labels), oldest first."""
        rows = self._rows("SELECT version FROM datasets WHERE pipeline = ? AND status = 'held'"
                          " ORDER BY version", [pipeline])
        return [r["version"] for r in rows]

    def training_datasets(self, pipeline: str) -> list[DatasetRecord]:
        """The data set versions training may use: not held (suspect labels waiting for an
        operator), not discarded."""
        rows = self._rows(
            f"SELECT * FROM datasets WHERE pipeline = ? AND status IN {TRAINABLE}"
            " ORDER BY version", [pipeline]
        )
        return [msgspec.convert(r, DatasetRecord) for r in rows]

    def dataset(self, pipeline: str, version: int) -> DatasetRecord | None:
        rows = self._rows("SELECT * FROM datasets WHERE pipeline = ? AND version = ?",
                          [pipeline, version])
        return msgspec.convert(rows[0], DatasetRecord) if rows else None

    def set_dataset_status(self, pipeline: str, version: int, status: str, reason: str,
                           *, only_from: tuple[str, ...] | None = None) -> bool:
        """Set a data set version's status (and why); with ``only_from``, only when its
        status is one of those. Returns whether it changed."""
        sql = ("UPDATE datasets SET status = ?, status_reason = ?, status_at = ?"
               " WHERE pipeline = ? AND version = ?")
        args: list[Any] = [status, reason, now_iso(), pipeline, version]
        if only_from:
            sql += f" AND status IN ({','.join('?' * len(only_from))})"
            args += list(only_from)
        with self._atomic() as db:
            return db.execute(sql, args).rowcount > 0

    def rows_since(self, pipeline: str, after_version: int) -> int:
        """Rows of the trainable data set versions after ``after_version``."""
        rows = self._rows(
            "SELECT COALESCE(SUM(rows), 0) AS n FROM datasets WHERE pipeline = ? AND version > ?"
            f" AND status IN {TRAINABLE}",
            [pipeline, after_version],
        )
        return rows[0]["n"]

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
        so a crash leaves either both or neither (durable, as every ingestion record)."""
        with self._atomic(durable=True):
            record = self.record_ingestion(status="feedback", **ingestion)
            self.add_feedback(record.pipeline, outcomes, record.id)
        return record
