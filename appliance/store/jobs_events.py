"""The activity log: events (what the ``Events`` emitter writes and the API streams) and jobs
(training runs, from start to their end), and the training asked for and not yet done
(``training_requests``: pending triggers and retries, kept across restarts)."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.store.connection import _dumps, _loads, now_iso
from appliance.store.records import EventRecord, JobRecord, TrainingRequestRecord


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

    def abandon_running_jobs(self, error: str) -> list[tuple[str, str]]:
        """Mark jobs left 'running' by a previous process as failed; returns their
        (pipeline, kind)."""
        with self._atomic() as db:
            left = db.execute("SELECT pipeline, kind FROM jobs WHERE status = 'running'"
                              " ORDER BY id").fetchall()
            db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?"
                " WHERE status = 'running'",
                [now_iso(), error],
            )
            return [(r[0], r[1]) for r in left]

    def jobs(self, pipeline: str, limit: int = 50) -> list[JobRecord]:
        rows = self._rows(
            "SELECT * FROM jobs WHERE pipeline = ? ORDER BY id DESC LIMIT ?", [pipeline, limit]
        )
        return [msgspec.convert(r, JobRecord) for r in rows]

    # --- training requests: asked for, not yet done ---------------------------------------

    def request_training(self, pipeline: str, trigger: str,
                         tune_trials: int | None = None) -> int:
        """Keep a pipeline's request for training (one row per pipeline: a newer request
        replaces the trigger, a search asked for stays); returns its sequence number."""
        with self._atomic() as db:
            db.execute(
                "INSERT INTO training_requests (pipeline, state, trigger, tune_trials, attempt,"
                " seq, requested_at) VALUES (?, 'pending', ?, ?, 0, 1, ?)"
                " ON CONFLICT(pipeline) DO UPDATE SET state = 'pending',"
                " trigger = excluded.trigger, due_at = NULL, dataset_version = NULL,"
                " tune_trials = COALESCE(excluded.tune_trials, training_requests.tune_trials),"
                " attempt = CASE training_requests.state WHEN 'pending'"
                " THEN training_requests.attempt ELSE 0 END,"
                " seq = training_requests.seq + 1, requested_at = excluded.requested_at",
                [pipeline, trigger, tune_trials, now_iso()],
            )
        return self.training_request(pipeline).seq  # type: ignore[union-attr]

    def schedule_training_retry(self, pipeline: str, attempt: int, due_at: float) -> None:
        """A failed run will be retried at ``due_at`` (unix seconds), as ``attempt``."""
        with self._atomic() as db:
            db.execute(
                "INSERT INTO training_requests (pipeline, state, trigger, attempt, due_at, seq,"
                " requested_at) VALUES (?, 'pending', 'retry', ?, ?, 1, ?)"
                " ON CONFLICT(pipeline) DO UPDATE SET state = 'pending', trigger = 'retry',"
                " attempt = excluded.attempt, due_at = excluded.due_at,"
                " dataset_version = NULL, seq = training_requests.seq + 1,"
                " requested_at = excluded.requested_at",
                [pipeline, attempt, due_at, now_iso()],
            )

    def finish_training_request(self, pipeline: str, seq: int) -> bool:
        """A run covered the request numbered ``seq``: remove it, unless a newer request
        came meanwhile (that one stays, for the run that follows). True when removed."""
        with self._atomic() as db:
            return db.execute(
                "DELETE FROM training_requests WHERE pipeline = ? AND seq = ?", [pipeline, seq]
            ).rowcount > 0

    def give_up_training(self, pipeline: str, seq: int, dataset_version: int) -> None:
        """Retries are spent: remember the data they gave up on (a restart does not train
        it again; new data or an operator does)."""
        with self._atomic() as db:
            db.execute(
                "UPDATE training_requests SET state = 'gave_up', attempt = 0, due_at = NULL,"
                " tune_trials = NULL, dataset_version = ? WHERE pipeline = ? AND seq = ?",
                [dataset_version, pipeline, seq],
            )

    def forget_training_request(self, pipeline: str) -> None:
        with self._atomic() as db:
            db.execute("DELETE FROM training_requests WHERE pipeline = ?", [pipeline])

    def training_request(self, pipeline: str) -> TrainingRequestRecord | None:
        rows = self._rows("SELECT * FROM training_requests WHERE pipeline = ?", [pipeline])
        return msgspec.convert(rows[0], TrainingRequestRecord) if rows else None

    def training_requests(self) -> list[TrainingRequestRecord]:
        rows = self._rows("SELECT * FROM training_requests ORDER BY requested_at, pipeline")
        return [msgspec.convert(r, TrainingRequestRecord) for r in rows]
