"""Attempts at ingesting a file that did not end: a claimed file whose start the process
did not live to finish (it died: out of memory, a native abort, a kill), and a file sent
back to the inbox for want of disk space or memory. Counted here, so a file that keeps
killing the daemon, or that needs more room than the disk has, is refused instead of
retried forever, across restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.store.connection import _dumps, _loads, now_iso

# A row whose file never came back (deleted from the inbox while it waited) goes after this.
_FORGET_AFTER = timedelta(days=30)


class IngestAttemptQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    def count_attempt(self, pipeline: str, kind: str, key: str,
                      details: dict[str, Any] | None = None) -> int:
        """Count one more attempt of ``kind`` at the file ``key``; the count so far."""
        now = now_iso()
        stale = (datetime.now(UTC) - _FORGET_AFTER).isoformat(timespec="milliseconds")
        with self._atomic() as db:
            db.execute("DELETE FROM ingest_attempts WHERE updated_at < ?",
                       [stale.replace("+00:00", "Z")])
            db.execute(
                "INSERT INTO ingest_attempts (pipeline, kind, key, count, details_json,"
                " updated_at) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(pipeline, kind, key)"
                " DO UPDATE SET count = count + 1, details_json = excluded.details_json,"
                " updated_at = excluded.updated_at",
                [pipeline, kind, key, _dumps(details or {}), now],
            )
            row = db.execute(
                "SELECT count FROM ingest_attempts WHERE pipeline = ? AND kind = ? AND key = ?",
                [pipeline, kind, key],
            ).fetchone()
        return int(row[0])

    def attempt(self, pipeline: str, kind: str, key: str) -> tuple[int, dict[str, Any]]:
        """(count, details of the last) of the attempts of ``kind`` at ``key``."""
        rows = self._rows(
            "SELECT count, details_json FROM ingest_attempts WHERE pipeline = ? AND kind = ?"
            " AND key = ?", [pipeline, kind, key])
        return (rows[0]["count"], _loads(rows[0]["details_json"], {})) if rows else (0, {})

    def forget_attempts(self, pipeline: str, keys: list[str]) -> None:
        """The file is done with (ended, or left the claim): its counts go."""
        if not keys:
            return
        marks = ",".join("?" * len(keys))
        with self._atomic() as db:
            db.execute(f"DELETE FROM ingest_attempts WHERE pipeline = ? AND key IN ({marks})",
                       [pipeline, *keys])
