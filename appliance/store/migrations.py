"""The schema as sqlite-utils migrations: each step runs once per database file, in order,
and is recorded in ``_sqlite_migrations``. Add a step; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

SCHEMA_VERSION = 11  # the number of migrations; a test keeps them in step

migrations = Migrations("appliance")


@migrations(name="0001_initial")
def _m0001(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE pipelines (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            schema_json TEXT,
            task TEXT
        )""")
    db.execute("""
        CREATE TABLE ingestions (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            file_name TEXT NOT NULL,
            sha256 TEXT,
            size_bytes INTEGER,
            rows INTEGER,
            columns INTEGER,
            status TEXT NOT NULL,           -- accepted | rejected | duplicate
            code TEXT,
            reason TEXT,
            details_json TEXT,
            warnings_json TEXT NOT NULL DEFAULT '[]',
            dataset_version INTEGER,
            dataset_path TEXT,
            stored_as TEXT,
            received_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            duration_ms REAL
        )""")
    db.execute("CREATE INDEX ingestions_pipeline ON ingestions (pipeline, id)")
    db.execute("CREATE INDEX ingestions_sha ON ingestions (pipeline, sha256)")
    db.execute("""
        CREATE TABLE datasets (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            path TEXT NOT NULL,
            rows INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            ingestion_id INTEGER,
            created_at TEXT NOT NULL,
            PRIMARY KEY (pipeline, version)
        )""")
    db.execute("""
        CREATE TABLE models (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            stage TEXT NOT NULL,            -- candidate | production | archived | rejected
            task TEXT NOT NULL,
            path TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            meta_sha256 TEXT NOT NULL,
            metrics_json TEXT NOT NULL,
            lineage_json TEXT NOT NULL,
            decision TEXT,
            created_at TEXT NOT NULL,
            promoted_at TEXT,
            PRIMARY KEY (pipeline, version)
        )""")
    db.execute("""
        CREATE UNIQUE INDEX models_one_production ON models (pipeline)
        WHERE stage = 'production'""")
    db.execute("""
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            kind TEXT NOT NULL,
            level TEXT NOT NULL,
            pipeline TEXT,
            message TEXT NOT NULL,
            details_json TEXT NOT NULL DEFAULT '{}'
        )""")
    db.execute("CREATE INDEX events_pipeline ON events (pipeline, id)")
    db.execute("""
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            kind TEXT NOT NULL,
            trigger TEXT NOT NULL,
            status TEXT NOT NULL,           -- running | succeeded | failed | cancelled
            started_at TEXT NOT NULL,
            finished_at TEXT,
            model_version INTEGER,
            error TEXT
        )""")
    db.execute("CREATE INDEX jobs_pipeline ON jobs (pipeline, id)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations(name="0002_prediction_log_and_feedback")
def _m0002(db: sqlite_utils.Database) -> None:
    # Every prediction served; ``inputs`` is kept only for the sampled ones (for drift).
    db.execute("""
        CREATE TABLE predictions (
            id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            ts REAL NOT NULL,               -- unix seconds
            model_version INTEGER NOT NULL,
            output TEXT NOT NULL,           -- JSON, as answered
            inputs TEXT                     -- JSON row, for sampled predictions only
        )""")
    db.execute("CREATE INDEX predictions_pipeline_ts ON predictions (pipeline, ts)")
    # True outcomes of earlier predictions, from feedback files.
    db.execute("""
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            prediction_id TEXT NOT NULL,
            outcome TEXT NOT NULL,          -- JSON value
            received_at REAL NOT NULL,
            ingestion_id INTEGER
        )""")
    db.execute("CREATE INDEX feedback_prediction ON feedback (pipeline, prediction_id)")


@migrations(name="0003_issue6_monitoring")
def _m0003_monitoring(db: sqlite_utils.Database) -> None:
    # Request metrics per pipeline: raw windows (seconds = 10) and hourly roll-ups
    # (seconds = 3600), merged as each raw window is written.
    db.execute("""
        CREATE TABLE request_windows (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            seconds REAL NOT NULL,
            start REAL NOT NULL,            -- unix seconds
            requests INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            errors_4xx INTEGER NOT NULL,
            errors_5xx INTEGER NOT NULL,
            latency_sum REAL NOT NULL,      -- seconds
            buckets TEXT NOT NULL,          -- JSON counts per latency bucket (monitor.py)
            UNIQUE (pipeline, seconds, start)
        )""")
    db.execute("CREATE INDEX request_windows_age ON request_windows (seconds, start)")
    # Process and box resources: raw samples and hourly roll-ups (the worst of the hour).
    db.execute("""
        CREATE TABLE resource_samples (
            id INTEGER PRIMARY KEY,
            seconds REAL NOT NULL,
            ts REAL NOT NULL,
            samples INTEGER NOT NULL,
            process_cpu_percent REAL NOT NULL,
            process_rss_bytes INTEGER NOT NULL,
            process_threads INTEGER NOT NULL,
            process_open_files INTEGER NOT NULL,
            cpu_percent REAL NOT NULL,
            memory_available_bytes INTEGER NOT NULL,
            memory_percent REAL NOT NULL,
            load_1m REAL NOT NULL,
            disk_free_bytes INTEGER NOT NULL,
            temperature_c REAL,
            UNIQUE (seconds, ts)
        )""")
    db.execute("""
        CREATE TABLE drift_reports (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            ts REAL NOT NULL,
            source TEXT NOT NULL,           -- predictions | ingestion
            model_version INTEGER,
            rows INTEGER NOT NULL,
            drifted INTEGER NOT NULL,
            drifted_share REAL NOT NULL,
            report TEXT NOT NULL            -- the DriftReport as JSON
        )""")
    db.execute("CREATE INDEX drift_reports_pipeline ON drift_reports (pipeline, id)")
    db.execute("CREATE INDEX drift_reports_age ON drift_reports (ts)")
    db.execute("""
        CREATE TABLE live_performance (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            model_version INTEGER NOT NULL,
            seconds REAL NOT NULL,
            start REAL NOT NULL,            -- window of prediction times
            metric TEXT NOT NULL,
            value REAL NOT NULL,
            labelled INTEGER NOT NULL,
            validation_value REAL,
            computed_at REAL NOT NULL,
            UNIQUE (pipeline, model_version, seconds, start)
        )""")
    db.execute("CREATE INDEX live_performance_age ON live_performance (start)")
    db.execute("CREATE INDEX feedback_age ON feedback (received_at)")


@migrations(name="0010_issue10_online_features")
def _m0010(db: sqlite_utils.Database) -> None:
    # The online store: the latest values per entity key of every feature set.
    db.execute("""
        CREATE TABLE online_features (
            feature_set TEXT NOT NULL,
            key TEXT NOT NULL,
            values_json TEXT NOT NULL,
            event_time TEXT,                -- the row's own time, when the set has one
            dataset_version INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (feature_set, key)
        )""")


@migrations(name="0019_training_requests_and_retention")
def _m_training_requests_and_retention(db: sqlite_utils.Database) -> None:
    # Training asked for and not yet done (or retried, or given up), so that a stop, a crash
    # or a power cut never drops it: one row per pipeline, cleared when a run covers it.
    db.execute("""
        CREATE TABLE training_requests (
            pipeline TEXT PRIMARY KEY,
            state TEXT NOT NULL,            -- pending | gave_up
            trigger TEXT NOT NULL,          -- new_data | drift | schedule | manual | retry
            tune_trials INTEGER,
            attempt INTEGER NOT NULL DEFAULT 0,   -- failed runs in a row (retries so far)
            due_at REAL,                    -- unix seconds: a retry waits until then
            dataset_version INTEGER,        -- gave_up: the newest data set it gave up on
            seq INTEGER NOT NULL,           -- bumped by every request; a run clears its own
            requested_at TEXT NOT NULL
        )""")
    # Retention deletes by age.
    db.execute("CREATE INDEX events_age ON events (ts)")
    db.execute("CREATE INDEX ingestions_age ON ingestions (finished_at)")
    db.execute("CREATE INDEX jobs_age ON jobs (finished_at)")


@migrations(name="0020_dataset_status")
def _m_dataset_status(db: sqlite_utils.Database) -> None:
    # A data set version trains unless it is held (its labels are suspect: it waits for an
    # operator) or discarded (by an operator; its files are kept). `released`: was held,
    # let through by an operator.
    db.execute("ALTER TABLE datasets ADD COLUMN status TEXT NOT NULL DEFAULT 'active'")
    db.execute("ALTER TABLE datasets ADD COLUMN status_reason TEXT")
    db.execute("ALTER TABLE datasets ADD COLUMN status_at TEXT")


@migrations(name="0021_count_indexes")
def _m_count_indexes(db: sqlite_utils.Database) -> None:
    # What the console asks every 1.5 s, counted from indexes alone: a pipeline's files by
    # status, and its data set versions with their rows and status (GET /v1/pipelines[/{name}]).
    db.execute("CREATE INDEX ingestions_status ON ingestions (pipeline, status)")
    db.execute("CREATE INDEX datasets_rows ON datasets (pipeline, rows, status)")


@migrations(name="0022_ingest_attempts")
def _m_ingest_attempts(db: sqlite_utils.Database) -> None:
    # Attempts at a file that did not end: ``started`` counts the starts of a claimed file
    # (key: its claimed name) that the process did not live to finish; ``no_room`` and
    # ``no_memory`` count the times a file (key: its sha256) went back to the inbox for want
    # of disk space or memory. A row goes when its file ends.
    db.execute("""
        CREATE TABLE ingest_attempts (
            pipeline TEXT NOT NULL,
            kind TEXT NOT NULL,             -- started | no_room | no_memory
            key TEXT NOT NULL,
            count INTEGER NOT NULL,
            details_json TEXT NOT NULL DEFAULT '{}',
            updated_at TEXT NOT NULL,
            PRIMARY KEY (pipeline, kind, key)
        )""")


@migrations(name="0023_bundles_seen")
def _m_bundles_seen(db: sqlite_utils.Database) -> None:
    # The files of the watched bundle source (bundles.source) already handled, by content:
    # each is imported (or refused) once, whatever its name or how often it is polled.
    db.execute("""
        CREATE TABLE bundles_seen (
            sha256 TEXT PRIMARY KEY,
            source TEXT NOT NULL,           -- the folder or URL it was found in
            name TEXT NOT NULL,             -- its file name there
            pipeline TEXT,
            outcome TEXT NOT NULL,          -- imported | refused | not_for_this_box
            version INTEGER,                -- the version it was registered as
            reason TEXT,
            seen_at TEXT NOT NULL
        )""")


@migrations(name="0024_shadow_scoring")
def _m_shadow_scoring(db: sqlite_utils.Database) -> None:
    # A candidate under the shadow policy: one row per shadowed version, its state
    # (shadowing | promoted | rejected | superseded) and the numbers of its decision.
    db.execute("""
        CREATE TABLE shadows (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            production_version INTEGER NOT NULL,  -- what it shadowed
            state TEXT NOT NULL,
            started_at REAL NOT NULL,
            decided_at REAL,
            decision TEXT,
            numbers_json TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (pipeline, version)
        )""")
    # Its numbers per window: requests seen and sampled, scored, dropped (queue full), its
    # errors, agreement with production, score differences and both latencies.
    db.execute("""
        CREATE TABLE shadow_windows (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            start REAL NOT NULL,
            seconds REAL NOT NULL,
            requests INTEGER NOT NULL,      -- live requests while it shadowed
            sampled INTEGER NOT NULL,
            scored INTEGER NOT NULL,        -- requests the shadow answered
            dropped INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            rows INTEGER NOT NULL,          -- rows of the scored requests
            agreed INTEGER NOT NULL,        -- rows where both gave the same answer
            diff_sum REAL NOT NULL,         -- sum of |shadow - production| over rows
            diff_max REAL NOT NULL,
            latency_sum REAL NOT NULL,      -- the shadow's seconds over scored requests
            production_latency_sum REAL NOT NULL,
            buckets_json TEXT NOT NULL,     -- the shadow's latency histogram
            production_buckets_json TEXT NOT NULL,
            PRIMARY KEY (pipeline, version, start)
        )""")
    # The shadow's output for each prediction id it scored, joined to feedback later.
    db.execute("""
        CREATE TABLE shadow_outputs (
            pipeline TEXT NOT NULL,
            version INTEGER NOT NULL,
            prediction_id TEXT NOT NULL,
            ts REAL NOT NULL,
            output TEXT NOT NULL,
            PRIMARY KEY (pipeline, version, prediction_id)
        )""")


@migrations(name="0025_rollout_watches")
def _m_rollout_watches(db: sqlite_utils.Database) -> None:
    # The version under watch after a promotion, per pipeline, with the request counts
    # the watch compares (JSON, as request windows), so that a restart resumes it.
    db.execute("""
        CREATE TABLE rollout_watches (
            pipeline TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            previous INTEGER NOT NULL,
            promoted_at REAL NOT NULL,
            until REAL NOT NULL,
            checked_at REAL NOT NULL,
            before_json TEXT NOT NULL,
            after_json TEXT NOT NULL
        )""")
