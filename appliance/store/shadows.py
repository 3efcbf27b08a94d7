"""Shadow scoring's tables: the candidates under the shadow policy and their decisions, their
numbers per window, and their outputs by prediction id (joined to feedback)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from appliance.store.connection import _dumps, _loads
from appliance.store.records import ShadowRecord, ShadowWindowRecord

_OUTPUTS_PER_INSERT = 150  # 5 parameters a row, far under SQLite's limit


class ShadowQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    def start_shadow(self, pipeline: str, version: int, production_version: int,
                     started_at: float) -> None:
        with self._atomic() as db:
            db.execute(
                "INSERT OR REPLACE INTO shadows (pipeline, version, production_version, state,"
                " started_at) VALUES (?, ?, ?, 'shadowing', ?)",
                [pipeline, version, production_version, started_at])

    def end_shadow(self, pipeline: str, version: int, state: str, decision: str,
                   numbers: dict[str, Any], decided_at: float) -> None:
        """Record the decision; the shadow's outputs by prediction id go (its windows stay)."""
        with self._atomic() as db:
            db.execute(
                "UPDATE shadows SET state = ?, decision = ?, numbers_json = ?, decided_at = ?"
                " WHERE pipeline = ? AND version = ?",
                [state, decision, _dumps(numbers), decided_at, pipeline, version])
            db.execute("DELETE FROM shadow_outputs WHERE pipeline = ? AND version = ?",
                       [pipeline, version])

    def shadow(self, pipeline: str, version: int) -> ShadowRecord | None:
        rows = self._rows("SELECT * FROM shadows WHERE pipeline = ? AND version = ?",
                          [pipeline, version])
        return self._shadow(rows[0]) if rows else None

    def shadows(self, pipeline: str | None = None,
                state: str | None = None) -> list[ShadowRecord]:
        where, params = [], []
        if pipeline is not None:
            where.append("pipeline = ?")
            params.append(pipeline)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        sql = "SELECT * FROM shadows" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self._rows(sql + " ORDER BY pipeline, version DESC", params)
        return [self._shadow(r) for r in rows]

    @staticmethod
    def _shadow(row: dict[str, Any]) -> ShadowRecord:
        row = dict(row)
        row["numbers"] = _loads(row.pop("numbers_json"), {})
        return msgspec.convert(row, ShadowRecord)

    def add_shadow_windows(self, windows: list[ShadowWindowRecord]) -> None:
        """Write windows; a window already stored (a flush at stop wrote part of it) adds up."""
        if not windows:
            return
        with self._atomic() as db:
            for w in windows:
                old = db.conn.execute(
                    "SELECT * FROM shadow_windows WHERE pipeline = ? AND version = ?"
                    " AND start = ?", [w.pipeline, w.version, w.start]).fetchone()
                if old is not None:
                    names = [d[0] for d in db.conn.execute(
                        "SELECT * FROM shadow_windows LIMIT 0").description]
                    w = merge_windows(self._window(dict(zip(names, old, strict=True))), w)
                db.conn.execute(
                    "INSERT OR REPLACE INTO shadow_windows (pipeline, version, start, seconds,"
                    " requests, sampled, scored, dropped, errors, rows, agreed, diff_sum,"
                    " diff_max, latency_sum, production_latency_sum, buckets_json,"
                    " production_buckets_json) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [w.pipeline, w.version, w.start, w.seconds, w.requests, w.sampled,
                     w.scored, w.dropped, w.errors, w.rows, w.agreed, w.diff_sum, w.diff_max,
                     w.latency_sum, w.production_latency_sum, json.dumps(w.buckets),
                     json.dumps(w.production_buckets)])

    def shadow_windows(self, pipeline: str, version: int) -> list[ShadowWindowRecord]:
        rows = self._rows("SELECT * FROM shadow_windows WHERE pipeline = ? AND version = ?"
                          " ORDER BY start", [pipeline, version])
        return [self._window(r) for r in rows]

    @staticmethod
    def _window(row: dict[str, Any]) -> ShadowWindowRecord:
        row = dict(row)
        row["buckets"] = json.loads(row.pop("buckets_json"))
        row["production_buckets"] = json.loads(row.pop("production_buckets_json"))
        return msgspec.convert(row, ShadowWindowRecord)

    def insert_shadow_outputs(self, rows: list[tuple[str, int, str, float, str]]) -> None:
        """(pipeline, version, prediction_id, ts, output_json) in one transaction."""
        if not rows:
            return
        with self._atomic() as db:
            for start in range(0, len(rows), _OUTPUTS_PER_INSERT):
                chunk = rows[start:start + _OUTPUTS_PER_INSERT]
                db.conn.execute(
                    "INSERT OR IGNORE INTO shadow_outputs (pipeline, version, prediction_id,"
                    " ts, output) VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row])

    def count_shadow_outputs(self, pipeline: str, version: int) -> int:
        return self._rows("SELECT COUNT(*) AS n FROM shadow_outputs WHERE pipeline = ?"
                          " AND version = ?", [pipeline, version])[0]["n"]

    def count_shadow_feedback(self, pipeline: str, version: int,
                              production_version: int) -> int:
        """How many of the shadow's scored predictions answered by ``production_version``
        have feedback."""
        return self._rows(
            "SELECT COUNT(*) AS n FROM shadow_outputs s"
            " JOIN predictions p ON p.id = s.prediction_id AND p.pipeline = s.pipeline"
            " JOIN feedback f ON f.prediction_id = s.prediction_id AND f.pipeline = s.pipeline"
            " WHERE s.pipeline = ? AND s.version = ? AND p.model_version = ?",
            [pipeline, version, production_version])[0]["n"]

    def shadow_feedback(self, pipeline: str, version: int
                        ) -> list[tuple[str, int, Any, Any, Any]]:
        """The shadow's scored predictions that have feedback: (prediction_id, the version
        that answered, its output, the shadow's output, the true outcome)."""
        rows = self._rows(
            "SELECT p.id, p.model_version, p.output, s.output AS shadow_output, f.outcome"
            " FROM shadow_outputs s"
            " JOIN predictions p ON p.id = s.prediction_id AND p.pipeline = s.pipeline"
            " JOIN feedback f ON f.prediction_id = s.prediction_id AND f.pipeline = s.pipeline"
            " WHERE s.pipeline = ? AND s.version = ? ORDER BY p.ts",
            [pipeline, version])
        return [(r["id"], r["model_version"], json.loads(r["output"]),
                 json.loads(r["shadow_output"]), json.loads(r["outcome"])) for r in rows]


def merge_windows(a: ShadowWindowRecord, b: ShadowWindowRecord) -> ShadowWindowRecord:
    """Two parts of one window (or several windows) added up."""
    def add(x: list[int], y: list[int]) -> list[int]:
        if len(x) != len(y):
            return y or x
        return [i + j for i, j in zip(x, y, strict=True)]

    return ShadowWindowRecord(
        pipeline=a.pipeline, version=a.version, start=min(a.start, b.start),
        seconds=a.seconds, requests=a.requests + b.requests, sampled=a.sampled + b.sampled,
        scored=a.scored + b.scored, dropped=a.dropped + b.dropped, errors=a.errors + b.errors,
        rows=a.rows + b.rows, agreed=a.agreed + b.agreed, diff_sum=a.diff_sum + b.diff_sum,
        diff_max=max(a.diff_max, b.diff_max), latency_sum=a.latency_sum + b.latency_sum,
        production_latency_sum=a.production_latency_sum + b.production_latency_sum,
        buckets=add(a.buckets, b.buckets),
        production_buckets=add(a.production_buckets, b.production_buckets))
