"""What keeps the activity tables bounded and takes a pipeline away: the retention deletes of
events, jobs, ingestion records, data set versions and model versions, and the removal of
every row of one pipeline (``appliance pipeline delete``).

Deletes of tables that can be large run in small transactions (``_delete_chunk`` of the
monitoring queries), so that a large clean-up never holds the store's lock for long.
"""

from __future__ import annotations

from typing import Any

from appliance.store.connection import _loads

CHUNK = 5000

# The tables that hold a pipeline's rows, and the column that names it. The first ones are
# small and go in one transaction (the pipeline is gone at once); the rest can hold millions
# of rows and go in chunks after it.
_CORE_TABLES = (("pipelines", "name"), ("datasets", "pipeline"), ("models", "pipeline"),
                ("ingestions", "pipeline"), ("jobs", "pipeline"),
                ("training_requests", "pipeline"), ("ingest_attempts", "pipeline"),
                ("online_features", "feature_set"), ("shadows", "pipeline"),
                ("rollout_watches", "pipeline"))
_BULK_TABLES = (("predictions", "pipeline"), ("feedback", "pipeline"),
                ("request_windows", "pipeline"), ("drift_reports", "pipeline"),
                ("live_performance", "pipeline"), ("events", "pipeline"),
                ("shadow_windows", "pipeline"), ("shadow_outputs", "pipeline"))


class HousekeepingQueries:
    """Mixed into Store: uses the connection's ``_atomic``, ``_rows`` and the monitoring
    queries' ``_delete_chunk``."""

    def _drain(self, table: str, where: str, params: list[Any]) -> int:
        total = 0
        while True:
            n = self._delete_chunk(table, where, params, CHUNK)  # type: ignore[attr-defined]
            total += n
            if n < CHUNK:
                return total

    # --- retention by age ------------------------------------------------------------------

    def delete_events_before(self, ts: str) -> int:
        """Events older than ``ts`` (ISO time, as stored)."""
        return self._drain("events", "ts < ?", [ts])

    def delete_jobs_before(self, ts: str) -> int:
        """Records of jobs that finished before ``ts``; a running one is never removed."""
        return self._drain("jobs", "status != 'running' AND finished_at < ?", [ts])

    def delete_ingestions_before(self, ts: str) -> int:
        """Records of refused, duplicate and feedback files that finished before ``ts``. An
        accepted file's record goes with its data set (:meth:`delete_datasets`)."""
        return self._drain("ingestions",
                           "status IN ('rejected', 'duplicate', 'feedback') AND finished_at < ?",
                           [ts])

    # --- retention of versions -------------------------------------------------------------

    def model_lineages(self, pipeline: str) -> list[dict[str, Any]]:
        """Per model version: version, stage, promoted_at and its lineage (decoded)."""
        rows = self._rows(  # type: ignore[attr-defined]
            "SELECT version, stage, promoted_at, lineage_json FROM models WHERE pipeline = ?"
            " ORDER BY version", [pipeline])
        for r in rows:
            r["lineage"] = _loads(r.pop("lineage_json"), {})
        return rows

    def delete_models(self, pipeline: str, versions: list[int]) -> int:
        """Remove model versions' rows (never the production one); their folders are the
        caller's to remove after (a crash between leaves folders the registry's clean-up
        at start removes)."""
        if not versions:
            return 0
        with self._atomic() as db:  # type: ignore[attr-defined]
            marks = ",".join("?" * len(versions))
            return db.execute(
                f"DELETE FROM models WHERE pipeline = ? AND stage != 'production'"
                f" AND version IN ({marks})", [pipeline, *versions]).rowcount

    def delete_datasets(self, pipeline: str, versions: list[int]) -> list[str]:
        """Remove data set versions and the records of the files they came from, in one
        transaction; returns their paths (relative to the state directory) for the caller
        to remove after. The newest version is never removed (versions count on from it)."""
        if not versions:
            return []
        with self._atomic() as db:  # type: ignore[attr-defined]
            newest = db.execute("SELECT MAX(version) FROM datasets WHERE pipeline = ?",
                                [pipeline]).fetchone()[0]
            versions = [v for v in versions if v != newest]
            if not versions:
                return []
            marks = ",".join("?" * len(versions))
            rows = db.execute(
                f"SELECT path, ingestion_id FROM datasets WHERE pipeline = ?"
                f" AND version IN ({marks})", [pipeline, *versions]).fetchall()
            ids = [r[1] for r in rows if r[1] is not None]
            db.execute(f"DELETE FROM datasets WHERE pipeline = ? AND version IN ({marks})",
                       [pipeline, *versions])
            if ids:
                db.execute(f"DELETE FROM ingestions WHERE id IN ({','.join('?' * len(ids))})",
                           ids)
        return [r[0] for r in rows]

    def drop_empty_pipeline(self, name: str) -> bool:
        """Forget a pipeline that holds nothing any more (no data set, model, ingestion
        record or training request): what a stray file in a new folder made, once its
        records aged out. True when it was dropped."""
        with self._atomic() as db:  # type: ignore[attr-defined]
            return db.execute(
                "DELETE FROM pipelines WHERE name = ?"
                " AND NOT EXISTS (SELECT 1 FROM datasets WHERE pipeline = ?)"
                " AND NOT EXISTS (SELECT 1 FROM models WHERE pipeline = ?)"
                " AND NOT EXISTS (SELECT 1 FROM ingestions WHERE pipeline = ?)"
                " AND NOT EXISTS (SELECT 1 FROM training_requests WHERE pipeline = ?)",
                [name, name, name, name, name]).rowcount > 0

    # --- a whole pipeline ------------------------------------------------------------------

    def pipeline_counts(self, name: str) -> dict[str, int]:
        """What a pipeline holds: data sets, models and ingestion records."""
        out = {}
        for table in ("datasets", "models", "ingestions"):
            out[table] = self._rows(  # type: ignore[attr-defined]
                f"SELECT COUNT(*) AS n FROM {table} WHERE pipeline = ?", [name])[0]["n"]
        return out

    def delete_pipeline_rows(self, name: str) -> None:
        """Every row of a pipeline: the pipeline, its data sets, models, ingestions, jobs and
        pending training at once; then its predictions, feedback, monitoring and events in
        small transactions."""
        with self._atomic() as db:  # type: ignore[attr-defined]
            for table, column in _CORE_TABLES:
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", [name])
        for table, column in _BULK_TABLES:
            self._drain(table, f"{column} = ?", [name])
