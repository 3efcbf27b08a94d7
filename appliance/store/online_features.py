"""The online feature store: the latest values per entity key of every feature set."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from appliance.store.connection import _dumps, now_iso

_KEYS_PER_QUERY = 500  # parameters of one IN (...), far under SQLite's limit


class OnlineReader:
    """Point reads of online values on a connection of their own (read-only, WAL), for
    the request path: they never wait for the store's lock, which a write of the daemon's
    (the prediction log, an ingestion) may hold for milliseconds. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def values(self, feature_set: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored values of those ``keys`` that have some, by key."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[start:start + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                for key, text in self._conn.execute(
                        f"SELECT key, values_json FROM online_features WHERE feature_set = ?"
                        f" AND key IN ({marks})", [feature_set, *chunk]):
                    out[key] = json.loads(text)
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class OnlineFeatureQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

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

    def online_reader(self) -> OnlineReader:
        """A reader of online values on its own read-only connection (the request path)."""
        return OnlineReader(self.path)

    def online_values(self, feature_set: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored values of those ``keys`` that have some, by key."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start:start + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            for r in self._rows(f"SELECT key, values_json FROM online_features WHERE"
                                f" feature_set = ? AND key IN ({marks})", [feature_set, *chunk]):
                out[r["key"]] = json.loads(r["values_json"])
        return out

    def online_recent(self, feature_set: str, limit: int) -> dict[str, dict[str, Any]]:
        """The values of the ``limit`` keys updated last (to warm a bounded cache)."""
        rows = self._rows(
            "SELECT key, values_json FROM online_features WHERE feature_set = ?"
            " ORDER BY updated_at DESC, dataset_version DESC LIMIT ?", [feature_set, limit],
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
