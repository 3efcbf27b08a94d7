"""The model registry's rows: versions of each pipeline's models and their stages
(candidate, production, archived, rejected); at most one production model per pipeline."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.store.connection import _dumps, _loads, now_iso
from appliance.store.records import ModelRecord


class ModelQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    # --- models --------------------------------------------------------------------------

    def max_model_version(self, pipeline: str) -> int:
        rows = self._rows(
            "SELECT COALESCE(MAX(version), 0) AS v FROM models WHERE pipeline = ?", [pipeline]
        )
        return rows[0]["v"]

    def add_model(
        self,
        *,
        pipeline: str,
        version: int,
        task: str,
        path: str,
        model_sha256: str,
        meta_sha256: str,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
    ) -> ModelRecord:
        with self._atomic() as db:
            db.execute(
                "INSERT INTO models (pipeline, version, stage, task, path, model_sha256,"
                " meta_sha256, metrics_json, lineage_json, created_at)"
                " VALUES (?, ?, 'candidate', ?, ?, ?, ?, ?, ?, ?)",
                [pipeline, version, task, path, model_sha256, meta_sha256, _dumps(metrics),
                 _dumps(lineage), now_iso()],
            )
        return self.model(pipeline, version)  # type: ignore[return-value]

    def model(self, pipeline: str, version: int) -> ModelRecord | None:
        rows = self._rows(
            "SELECT * FROM models WHERE pipeline = ? AND version = ?", [pipeline, version]
        )
        return self._model(rows[0]) if rows else None

    def models(self, pipeline: str) -> list[ModelRecord]:
        rows = self._rows(
            "SELECT * FROM models WHERE pipeline = ? ORDER BY version DESC", [pipeline]
        )
        return [self._model(r) for r in rows]

    def production_model(self, pipeline: str) -> ModelRecord | None:
        rows = self._rows(
            "SELECT * FROM models WHERE pipeline = ? AND stage = 'production'", [pipeline]
        )
        return self._model(rows[0]) if rows else None

    def production_summary(self, pipeline: str) -> tuple[int, str, dict[str, Any]] | None:
        """(version, task, metrics) of the production model, without its lineage."""
        rows = self._rows(
            "SELECT version, task, metrics_json FROM models WHERE pipeline = ?"
            " AND stage = 'production'", [pipeline],
        )
        if not rows:
            return None
        return rows[0]["version"], rows[0]["task"], _loads(rows[0]["metrics_json"], {})

    def production_versions(self) -> dict[str, int]:
        """The production version of every pipeline that has one."""
        rows = self._rows("SELECT pipeline, version FROM models WHERE stage = 'production'")
        return {r["pipeline"]: r["version"] for r in rows}

    def model_count(self, pipeline: str) -> int:
        return self._rows("SELECT COUNT(*) AS n FROM models WHERE pipeline = ?",
                          [pipeline])[0]["n"]

    def model_versions(self, pipeline: str) -> set[int]:
        rows = self._rows("SELECT version FROM models WHERE pipeline = ?", [pipeline])
        return {r["version"] for r in rows}

    def set_production(self, pipeline: str, version: int, decision: str) -> None:
        """Make ``version`` the one production model; the previous one is archived."""
        with self._atomic() as db:
            db.execute(
                "UPDATE models SET stage = 'archived' WHERE pipeline = ? AND stage = 'production'",
                [pipeline],
            )
            db.execute(
                "UPDATE models SET stage = 'production', decision = ?, promoted_at = ?"
                " WHERE pipeline = ? AND version = ?",
                [decision, now_iso(), pipeline, version],
            )

    def set_model_stage(self, pipeline: str, version: int, stage: str, decision: str) -> None:
        with self._atomic() as db:
            db.execute(
                "UPDATE models SET stage = ?, decision = ? WHERE pipeline = ? AND version = ?",
                [stage, decision, pipeline, version],
            )

    @staticmethod
    def _model(row: dict[str, Any]) -> ModelRecord:
        row = dict(row)
        row["metrics"] = _loads(row.pop("metrics_json"), {})
        row["lineage"] = _loads(row.pop("lineage_json"), {})
        return msgspec.convert(row, ModelRecord)
