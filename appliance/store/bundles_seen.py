"""The files of the watched bundle source already handled (imported or refused), by
their SHA-256, so each is handled once."""

from __future__ import annotations

from appliance.store.connection import now_iso


class BundleSeenQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    def bundle_seen(self, sha256: str) -> bool:
        return bool(self._rows("SELECT 1 FROM bundles_seen WHERE sha256 = ?", [sha256]))

    def add_bundle_seen(self, *, sha256: str, source: str, name: str, pipeline: str | None,
                        outcome: str, version: int | None = None,
                        reason: str | None = None) -> None:
        with self._atomic() as db:
            db.execute(
                "INSERT INTO bundles_seen (sha256, source, name, pipeline, outcome, version,"
                " reason, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO"
                " NOTHING", [sha256, source, name, pipeline, outcome, version, reason,
                             now_iso()])
