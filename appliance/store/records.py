"""The records the store's readers get back: one msgspec Struct per table (or aggregate),
with JSON columns already decoded."""

from __future__ import annotations

from typing import Any

import msgspec


class PipelineRecord(msgspec.Struct, kw_only=True):
    name: str
    created_at: str
    schema: dict[str, str] | None
    task: str | None


class IngestionRecord(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    file_name: str
    sha256: str | None
    size_bytes: int | None
    rows: int | None
    columns: int | None
    status: str
    code: str | None
    reason: str | None
    details: dict[str, Any]
    warnings: list[str]
    dataset_version: int | None
    dataset_path: str | None
    stored_as: str | None
    received_at: str
    finished_at: str
    duration_ms: float | None


class DatasetRecord(msgspec.Struct, kw_only=True):
    pipeline: str
    version: int
    path: str
    rows: int
    sha256: str
    ingestion_id: int | None
    created_at: str
    status: str = "active"  # active | held | released | discarded
    status_reason: str | None = None  # why it is held, or who released or discarded it
    status_at: str | None = None


class ModelRecord(msgspec.Struct, kw_only=True):
    pipeline: str
    version: int
    stage: str
    task: str
    path: str
    model_sha256: str
    meta_sha256: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    decision: str | None
    created_at: str
    promoted_at: str | None


class EventRecord(msgspec.Struct, kw_only=True):
    id: int
    ts: str
    kind: str
    level: str
    pipeline: str | None
    message: str
    details: dict[str, Any]


class JobRecord(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    kind: str
    trigger: str
    status: str
    started_at: str
    finished_at: str | None
    model_version: int | None
    error: str | None


class TrainingRequestRecord(msgspec.Struct, kw_only=True):
    """Training asked for and not yet done (``pending``), or given up after its retries."""
    pipeline: str
    state: str
    trigger: str
    tune_trials: int | None
    attempt: int
    due_at: float | None
    dataset_version: int | None
    seq: int
    requested_at: str


class WindowRecord(msgspec.Struct, kw_only=True):
    """Request metrics of one pipeline over one window (raw) or hour (roll-up)."""
    pipeline: str
    seconds: float
    start: float
    requests: int
    rows: int
    errors_4xx: int
    errors_5xx: int
    latency_sum: float
    buckets: list[int]


class RolloutWatchRecord(msgspec.Struct, kw_only=True):
    """A newly promoted version under watch (kept so that a restart resumes the watch): the
    previous version's requests before the promotion, the new one's since, and when they
    were last counted."""
    pipeline: str
    version: int
    previous: int
    promoted_at: float
    until: float
    checked_at: float
    before: WindowRecord
    after: WindowRecord


class ResourceRecord(msgspec.Struct, kw_only=True):
    seconds: float
    ts: float
    samples: int = 1
    process_cpu_percent: float
    process_rss_bytes: int
    process_threads: int
    process_open_files: int
    cpu_percent: float
    memory_available_bytes: int
    memory_percent: float
    load_1m: float
    disk_free_bytes: int
    temperature_c: float | None = None


class DriftRecord(msgspec.Struct, kw_only=True):
    id: int
    pipeline: str
    ts: float
    source: str
    model_version: int | None
    rows: int
    drifted: bool
    drifted_share: float
    report: dict[str, Any]


class LivePerformanceRecord(msgspec.Struct, kw_only=True):
    pipeline: str
    model_version: int
    seconds: float
    start: float
    metric: str
    value: float
    labelled: int
    validation_value: float | None
    computed_at: float


class CountRecord(msgspec.Struct, kw_only=True):
    """How many ingestions or jobs ended how, and how long they took in total."""
    pipeline: str
    kind: str
    status: str
    count: int
    seconds: float
    last_at: str | None = None  # when the newest of them ended (ISO 8601, UTC)


class ShadowRecord(msgspec.Struct, kw_only=True):
    """A candidate under the shadow policy, and its decision once made."""
    pipeline: str
    version: int
    production_version: int
    state: str  # shadowing | promoted | rejected | superseded
    started_at: float
    decided_at: float | None
    decision: str | None
    numbers: dict[str, Any]


class ShadowWindowRecord(msgspec.Struct, kw_only=True):
    """A shadow's numbers over one window."""
    pipeline: str
    version: int
    start: float
    seconds: float
    requests: int = 0
    sampled: int = 0
    scored: int = 0
    dropped: int = 0
    errors: int = 0
    rows: int = 0
    agreed: int = 0
    diff_sum: float = 0.0
    diff_max: float = 0.0
    latency_sum: float = 0.0
    production_latency_sum: float = 0.0
    buckets: list[int] = []
    production_buckets: list[int] = []
