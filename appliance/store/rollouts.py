"""The version under watch after a promotion, per pipeline (see
:mod:`appliance.monitoring.rollout`): kept so that a restart resumes the watch."""

from __future__ import annotations

import msgspec

from appliance.store.records import RolloutWatchRecord, WindowRecord


class RolloutQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    def save_rollout_watch(self, w: RolloutWatchRecord) -> None:
        """Start or update the pipeline's watch (one per pipeline: a newer one replaces)."""
        with self._atomic() as db:  # type: ignore[attr-defined]
            db.execute(
                "INSERT OR REPLACE INTO rollout_watches (pipeline, version, previous,"
                " promoted_at, until, checked_at, before_json, after_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [w.pipeline, w.version, w.previous, w.promoted_at, w.until, w.checked_at,
                 msgspec.json.encode(w.before).decode(),
                 msgspec.json.encode(w.after).decode()])

    def end_rollout_watch(self, pipeline: str, version: int) -> None:
        with self._atomic() as db:  # type: ignore[attr-defined]
            db.execute("DELETE FROM rollout_watches WHERE pipeline = ? AND version = ?",
                       [pipeline, version])

    def rollout_watches(self) -> list[RolloutWatchRecord]:
        out = []
        for r in self._rows("SELECT * FROM rollout_watches ORDER BY pipeline"):  # type: ignore[attr-defined]
            r = dict(r)
            r["before"] = msgspec.json.decode(r.pop("before_json"), type=WindowRecord)
            r["after"] = msgspec.json.decode(r.pop("after_json"), type=WindowRecord)
            out.append(msgspec.convert(r, RolloutWatchRecord))
        return out
