"""The activity log: events (what the ``Events`` emitter writes and the API streams) and jobs
(training runs, from start to their end)."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.store.connection import _dumps, _loads, now_iso
from appliance.store.records import EventRecord, JobRecord


class EventAndJobQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

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
