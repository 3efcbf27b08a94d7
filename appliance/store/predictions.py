"""The prediction log (every prediction served, with inputs for the sampled ones) and the
feedback that gives their true outcomes."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any

from appliance.store.connection import _dumps

_PREDICTIONS_PER_INSERT = 100  # 600 parameters, far under SQLite's limit of 32766


@functools.cache
def _insert_predictions_sql(n: int) -> str:
    return ("INSERT OR IGNORE INTO predictions (id, pipeline, ts, model_version, output, inputs)"
            " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n))


class PredictionQueries:
    """Mixed into Store: uses the connection's ``_atomic`` and ``_rows``."""

    # --- prediction log and feedback ----------------------------------------------------

    def insert_predictions(
        self, rows: Iterable[tuple[str, str, float, int, str, str | None]]
    ) -> None:
        """Write a batch of (id, pipeline, ts, model_version, output_json, inputs_json|None)
        in one transaction. ``rows`` may be a generator: it is drawn 100 rows at a time."""
        # Many rows per statement: one sqlite3_step, so one release of the GIL, per 100 rows
        # instead of per row; with a row each, the writer thread and the event loop that
        # serves predictions hand the GIL back and forth thousands of times a second. And
        # no more than 100 rows are made at a time: a generator's rows are built between two
        # steps, so the writer never holds the GIL long (a thousand rows made up front held
        # it for most of a millisecond, which a prediction waited for in its latency tail).
        it = iter(rows)
        chunk = list(islice(it, _PREDICTIONS_PER_INSERT))
        if not chunk:
            return
        with self._atomic() as db:
            while chunk:
                db.conn.execute(_insert_predictions_sql(len(chunk)),
                                [value for row in chunk for value in row])
                chunk = list(islice(it, _PREDICTIONS_PER_INSERT))

    def prediction_inputs(
        self, pipeline: str, since_ts: float, limit: int = 10_000
    ) -> list[tuple[float, int, dict[str, Any], Any]]:
        """The sampled inputs since ``since_ts``, newest first: (ts, version, row, output)."""
        rows = self._rows(
            "SELECT ts, model_version, inputs, output FROM predictions WHERE pipeline = ?"
            " AND ts >= ? AND inputs IS NOT NULL ORDER BY ts DESC LIMIT ?",
            [pipeline, since_ts, limit],
        )
        return [(r["ts"], r["model_version"], json.loads(r["inputs"]), json.loads(r["output"]))
                for r in rows]

    def latest_sampled_prediction(
        self, pipeline: str, version: int, within: int = 10_000
    ) -> tuple[str, float, Any, dict[str, Any]] | None:
        """The newest prediction of model ``version`` whose inputs were sampled, among the
        pipeline's ``within`` newest predictions (a bounded read, whatever the sample rate):
        (id, ts, output, inputs), or None."""
        rows = self._rows(
            "SELECT id, ts, output, inputs FROM (SELECT id, ts, model_version, output, inputs"
            " FROM predictions WHERE pipeline = ? ORDER BY ts DESC LIMIT ?)"
            " WHERE inputs IS NOT NULL AND model_version = ? ORDER BY ts DESC LIMIT 1",
            [pipeline, within, version],
        )
        if not rows:
            return None
        r = rows[0]
        return r["id"], r["ts"], json.loads(r["output"]), json.loads(r["inputs"])

    def count_predictions(self, pipeline: str) -> int:
        return self._rows(
            "SELECT COUNT(*) AS n FROM predictions WHERE pipeline = ?", [pipeline]
        )[0]["n"]

    def add_feedback(
        self, pipeline: str, outcomes: list[tuple[str, Any]], ingestion_id: int | None = None
    ) -> int:
        """Record (prediction_id, outcome) pairs; returns how many were written."""
        now = time.time()
        with self._atomic() as db:
            db.conn.executemany(
                "INSERT INTO feedback (pipeline, prediction_id, outcome, received_at,"
                " ingestion_id) VALUES (?, ?, ?, ?, ?)",
                [(pipeline, pid, _dumps(outcome), now, ingestion_id) for pid, outcome in outcomes],
            )
        return len(outcomes)

    def feedback_joined(
        self, pipeline: str, since_ts: float = 0.0
    ) -> list[tuple[str, float, int, Any, Any]]:
        """Feedback joined to its predictions: (prediction_id, predicted_ts, model_version,
        output, outcome), for predictions made since ``since_ts``."""
        rows = self._rows(
            "SELECT p.id, p.ts, p.model_version, p.output, f.outcome FROM feedback f"
            " JOIN predictions p ON p.id = f.prediction_id AND p.pipeline = f.pipeline"
            " WHERE f.pipeline = ? AND p.ts >= ? ORDER BY p.ts",
            [pipeline, since_ts],
        )
        return [(r["id"], r["ts"], r["model_version"], json.loads(r["output"]),
                 json.loads(r["outcome"])) for r in rows]

    def count_known_predictions(self, pipeline: str, ids: list[str]) -> int:
        """How many of ``ids`` are in the prediction log of ``pipeline``."""
        known = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            known += self._rows(
                f"SELECT COUNT(*) AS n FROM predictions WHERE pipeline = ? AND id IN ({marks})",
                [pipeline, *chunk],
            )[0]["n"]
        return known
