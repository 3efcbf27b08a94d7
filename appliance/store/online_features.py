"""The online feature store: the latest values per entity key of every feature set."""

from __future__ import annotations

import json
from typing import Any

from appliance.store.connection import _dumps, now_iso


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
