"""The connection every query goes through: opening (migrating) and read-only opening, the
lock and the two helpers the query areas use (``_atomic`` for writes, ``_rows`` for reads),
and what concerns the whole file (schema version, journal mode, integrity, migrations,
backups, row counts).

One file in WAL mode, written through sqlite-utils. One connection is shared by the
daemon's threads behind a lock: writes are small and short, and WAL lets readers in other
processes (``sqlite3``, backups) read while the daemon writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import sqlite_utils

from appliance.store.migrations import SCHEMA_VERSION, migrations


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def monotonic_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)


# JSON columns: written compact, read back with a default for NULL. Shared by the query
# areas, so module-level here.
def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Connection:
    """The shared connection and its lock; :class:`~appliance.store.database.Store` adds the
    queries of each area on top."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> Self:
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
    def _atomic(self, durable: bool = False) -> Iterator[sqlite_utils.Database]:
        """One transaction. Commits run with ``synchronous=NORMAL``: in WAL mode a power cut
        may lose the last ones (never corrupt the file). A ``durable`` commit is fsynced
        before this returns (``synchronous=FULL`` for it alone): what the caller does next
        on disk (moving a dropped file out of ``processing/``) may rely on it."""
        with self._lock:
            full = durable and not self._conn.in_transaction
            if full:
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                with self._db.atomic():
                    yield self._db
            finally:
                if full:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

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

    # --- read-only access and backups (doctor, backup) -----------------------------------

    @classmethod
    def open_readonly(cls, path: Path) -> Self:
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

    def table_counts(self) -> dict[str, int]:
        """Rows per monitoring table (for status and tests)."""
        out = {}
        for table in ("request_windows", "resource_samples", "drift_reports",
                      "live_performance", "predictions", "feedback"):
            out[table] = self._rows(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
        return out
