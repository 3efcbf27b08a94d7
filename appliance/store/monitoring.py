"""Monitoring's tables: request windows and resource samples (raw, and hourly roll-ups merged
as each raw row is written), drift reports, live performance, the counts of ingestions and
jobs, and the retention deletes of all of these and of the prediction log."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgspec

from appliance.store.connection import _dumps
from appliance.store.records import (
    CountRecord,
    DriftRecord,
    LivePerformanceRecord,
    ResourceRecord,
    WindowRecord,
)

ROLLUP_SECONDS = 3600.0  # monitoring roll-ups are hourly; shorter rows are raw


class MonitoringQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    # --- monitoring: request windows, resources, drift, live performance, retention -----

    def write_windows(self, windows: list[WindowRecord],
                      rollup_seconds: float = ROLLUP_SECONDS) -> None:
        """Write raw windows and merge each into its hourly roll-up, in one transaction.
        A window already stored (a restart within the same window) is merged, not lost."""
        if not windows:
            return
        with self._atomic() as db:
            for w in windows:
                self._merge_window(db.conn, w, w.seconds, w.start)
                self._merge_window(db.conn, w, rollup_seconds, w.start - w.start % rollup_seconds)

    @staticmethod
    def _merge_window(conn: sqlite3.Connection, w: WindowRecord, seconds: float,
                      start: float) -> None:
        row = conn.execute(
            "SELECT requests, rows, errors_4xx, errors_5xx, latency_sum, buckets"
            " FROM request_windows WHERE pipeline = ? AND seconds = ? AND start = ?",
            [w.pipeline, seconds, start],
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO request_windows (pipeline, seconds, start, requests, rows,"
                " errors_4xx, errors_5xx, latency_sum, buckets) VALUES (?,?,?,?,?,?,?,?,?)",
                [w.pipeline, seconds, start, w.requests, w.rows, w.errors_4xx, w.errors_5xx,
                 w.latency_sum, _dumps(w.buckets)],
            )
            return
        old = json.loads(row[5])
        merged = ([a + b for a, b in zip(old, w.buckets, strict=True)]
                  if len(old) == len(w.buckets) else w.buckets)
        conn.execute(
            "UPDATE request_windows SET requests = ?, rows = ?, errors_4xx = ?, errors_5xx = ?,"
            " latency_sum = ?, buckets = ? WHERE pipeline = ? AND seconds = ? AND start = ?",
            [row[0] + w.requests, row[1] + w.rows, row[2] + w.errors_4xx,
             row[3] + w.errors_5xx, row[4] + w.latency_sum, _dumps(merged), w.pipeline,
             seconds, start],
        )

    def windows(self, pipeline: str, since: float, until: float = float("inf"),
                rollups: bool = False) -> list[WindowRecord]:
        """Raw windows (or hourly roll-ups) of a pipeline that start in [since, until)."""
        op = ">=" if rollups else "<"
        rows = self._rows(
            "SELECT pipeline, seconds, start, requests, rows, errors_4xx, errors_5xx,"
            " latency_sum, buckets FROM request_windows WHERE pipeline = ?"
            f" AND seconds {op} ? AND start >= ? AND start < ? ORDER BY start",
            [pipeline, ROLLUP_SECONDS, since, min(until, 1e18)],
        )
        for r in rows:
            r["buckets"] = json.loads(r["buckets"])
        return [msgspec.convert(r, WindowRecord) for r in rows]

    _RESOURCE_FIELDS = ("process_cpu_percent", "process_rss_bytes", "process_threads",
                        "process_open_files", "cpu_percent", "memory_available_bytes",
                        "memory_percent", "load_1m", "disk_free_bytes", "temperature_c")
    # How an hour's roll-up keeps each field: the mean of the load, the worst of the rest.
    _RESOURCE_ROLLUP = {
        "process_cpu_percent": "mean", "cpu_percent": "mean", "load_1m": "mean",
        "process_rss_bytes": "max", "process_threads": "max", "process_open_files": "max",
        "memory_percent": "max", "temperature_c": "max",
        "memory_available_bytes": "min", "disk_free_bytes": "min",
    }

    def add_resource_sample(self, sample: ResourceRecord,
                            rollup_seconds: float = ROLLUP_SECONDS) -> None:
        """Write a raw sample and fold it into its hour's roll-up, in one transaction."""
        fields = self._RESOURCE_FIELDS
        values = [getattr(sample, f) for f in fields]
        cols = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        merge = []
        for f in fields:
            how = self._RESOURCE_ROLLUP[f]
            if how == "mean":
                merge.append(f"{f} = ({f} * samples + excluded.{f}) / (samples + 1)")
            else:
                fn = "MAX" if how == "max" else "MIN"
                merge.append(f"{f} = COALESCE({fn}({f}, excluded.{f}), {f}, excluded.{f})")
        hour = sample.ts - sample.ts % rollup_seconds
        with self._atomic() as db:
            db.execute(
                f"INSERT OR REPLACE INTO resource_samples (seconds, ts, samples, {cols})"
                f" VALUES (?, ?, 1, {marks})",
                [sample.seconds, sample.ts, *values],
            )
            db.execute(
                f"INSERT INTO resource_samples (seconds, ts, samples, {cols})"
                f" VALUES (?, ?, 1, {marks}) ON CONFLICT (seconds, ts) DO UPDATE SET"
                f" {', '.join(merge)}, samples = samples + 1",
                [rollup_seconds, hour, *values],
            )

    def resource_samples(self, since: float, until: float = float("inf"),
                         rollups: bool = False) -> list[ResourceRecord]:
        """Raw samples (or hourly roll-ups) taken in [since, until)."""
        op = ">=" if rollups else "<"
        rows = self._rows(
            f"SELECT seconds, ts, samples, {', '.join(self._RESOURCE_FIELDS)}"
            f" FROM resource_samples WHERE seconds {op} ? AND ts >= ? AND ts < ? ORDER BY ts",
            [ROLLUP_SECONDS, since, min(until, 1e18)],
        )
        for r in rows:
            for f in ("process_rss_bytes", "process_threads", "process_open_files",
                      "memory_available_bytes", "disk_free_bytes"):
                r[f] = int(r[f])
        return [msgspec.convert(r, ResourceRecord) for r in rows]

    def add_drift_report(self, *, pipeline: str, ts: float, source: str,
                         model_version: int | None, rows: int, drifted: bool,
                         drifted_share: float, report: dict[str, Any]) -> int:
        with self._atomic() as db:
            cursor = db.execute(
                "INSERT INTO drift_reports (pipeline, ts, source, model_version, rows, drifted,"
                " drifted_share, report) VALUES (?,?,?,?,?,?,?,?)",
                [pipeline, ts, source, model_version, rows, int(drifted), drifted_share,
                 _dumps(report)],
            )
            return cursor.lastrowid  # type: ignore[return-value]

    def drift_reports(self, pipeline: str, limit: int = 100,
                      source: str | None = None) -> list[DriftRecord]:
        """The newest drift reports of a pipeline, newest first."""
        sql = "SELECT * FROM drift_reports WHERE pipeline = ?"
        params: list[Any] = [pipeline]
        if source is not None:
            sql += " AND source = ?"
            params.append(source)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        out = []
        for r in self._rows(sql, params):
            r["report"] = json.loads(r["report"])
            r["drifted"] = bool(r["drifted"])
            out.append(msgspec.convert(r, DriftRecord))
        return out

    def upsert_live_performance(self, rows: list[LivePerformanceRecord]) -> None:
        if not rows:
            return
        with self._atomic() as db:
            db.conn.executemany(
                "INSERT INTO live_performance (pipeline, model_version, seconds, start, metric,"
                " value, labelled, validation_value, computed_at) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (pipeline, model_version, seconds, start) DO UPDATE SET"
                " metric = excluded.metric, value = excluded.value,"
                " labelled = excluded.labelled, validation_value = excluded.validation_value,"
                " computed_at = excluded.computed_at",
                [(r.pipeline, r.model_version, r.seconds, r.start, r.metric, r.value,
                  r.labelled, r.validation_value, r.computed_at) for r in rows],
            )

    def live_performance(self, pipeline: str, since: float) -> list[LivePerformanceRecord]:
        rows = self._rows(
            "SELECT pipeline, model_version, seconds, start, metric, value, labelled,"
            " validation_value, computed_at FROM live_performance WHERE pipeline = ?"
            " AND start >= ? ORDER BY start, model_version",
            [pipeline, since],
        )
        return [msgspec.convert(r, LivePerformanceRecord) for r in rows]

    def ingestion_counts(self) -> list[CountRecord]:
        """Ingestions per pipeline and status, with their total duration."""
        rows = self._rows(
            "SELECT pipeline, 'ingest' AS kind, status, COUNT(*) AS count,"
            " COALESCE(SUM(duration_ms), 0) / 1000.0 AS seconds, MAX(finished_at) AS last_at"
            " FROM ingestions"
            " GROUP BY pipeline, status ORDER BY pipeline, status"
        )
        return [msgspec.convert(r, CountRecord) for r in rows]

    def job_counts(self) -> list[CountRecord]:
        """Finished jobs per pipeline, kind and status, with their total duration."""
        rows = self._rows(
            "SELECT pipeline, kind, status, COUNT(*) AS count,"
            " COALESCE(SUM((julianday(finished_at) - julianday(started_at)) * 86400.0), 0)"
            " AS seconds FROM jobs WHERE finished_at IS NOT NULL"
            " GROUP BY pipeline, kind, status ORDER BY pipeline, kind, status"
        )
        return [msgspec.convert(r, CountRecord) for r in rows]

    # Retention deletes in small transactions, so that a large clean-up never holds the
    # store's lock (and the API's reads) for long.

    def _delete_chunk(self, table: str, where: str, params: list[Any], limit: int) -> int:
        with self._atomic() as db:
            cursor = db.execute(
                f"DELETE FROM {table} WHERE rowid IN"
                f" (SELECT rowid FROM {table} WHERE {where} LIMIT ?)",
                [*params, limit],
            )
            return cursor.rowcount

    def delete_windows_before(self, before: float, rollups: bool, limit: int = 5000) -> int:
        """Remove raw windows (or hourly roll-ups) that started before ``before``."""
        op = ">=" if rollups else "<"
        return self._delete_chunk("request_windows", f"seconds {op} ? AND start < ?",
                                  [ROLLUP_SECONDS, before], limit)

    def delete_resource_samples_before(self, before: float, rollups: bool,
                                       limit: int = 5000) -> int:
        op = ">=" if rollups else "<"
        return self._delete_chunk("resource_samples", f"seconds {op} ? AND ts < ?",
                                  [ROLLUP_SECONDS, before], limit)

    def delete_drift_reports_before(self, before: float, limit: int = 5000) -> int:
        return self._delete_chunk("drift_reports", "ts < ?", [before], limit)

    def delete_live_performance_before(self, before: float, limit: int = 5000) -> int:
        return self._delete_chunk("live_performance", "start < ?", [before], limit)

    def delete_feedback_before(self, before: float, limit: int = 5000) -> int:
        return self._delete_chunk("feedback", "received_at < ?", [before], limit)

    def prediction_pipelines(self) -> list[str]:
        return [r["pipeline"] for r in
                self._rows("SELECT DISTINCT pipeline FROM predictions ORDER BY pipeline")]

    def prediction_cutoff(self, pipeline: str, keep: int) -> float | None:
        """The time of the newest prediction beyond the ``keep`` newest, if there are more."""
        rows = self._rows(
            "SELECT ts FROM predictions WHERE pipeline = ? ORDER BY ts DESC LIMIT 1 OFFSET ?",
            [pipeline, keep],
        )
        return rows[0]["ts"] if rows else None

    def delete_predictions_before(self, pipeline: str, before: float, inclusive: bool = False,
                                  limit: int = 5000) -> int:
        op = "<=" if inclusive else "<"
        return self._delete_chunk("predictions", f"pipeline = ? AND ts {op} ?",
                                  [pipeline, before], limit)
