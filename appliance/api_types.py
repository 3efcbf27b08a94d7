"""Every request and response body of the HTTP API, as msgspec Structs.

The server encodes these and the TUI decodes them, so a change of contract breaks a test,
not an operator's screen.
"""

from typing import Any

import msgspec


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: dict[str, Any] = {}


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str


class Ready(msgspec.Struct, kw_only=True):
    ready: bool
    models: dict[str, int]
    waiting_for: list[str] = []


class ModelInfo(msgspec.Struct, kw_only=True):
    version: int
    stage: str
    task: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    decision: str | None
    created_at: str
    promoted_at: str | None


class IngestionInfo(msgspec.Struct, kw_only=True):
    id: int
    file_name: str
    status: str
    code: str | None
    reason: str | None
    details: dict[str, Any]
    warnings: list[str]
    rows: int | None
    columns: int | None
    size_bytes: int | None
    sha256: str | None
    dataset_version: int | None
    received_at: str
    finished_at: str
    duration_ms: float | None


class PipelineSummary(msgspec.Struct, kw_only=True):
    name: str
    status: str
    task: str | None
    production_version: int | None
    serving_version: int | None
    primary_metric: str | None
    primary_metric_value: float | None
    datasets: int
    rows: int
    last_ingestion: str | None


class PipelineList(msgspec.Struct, kw_only=True):
    pipelines: list[PipelineSummary]


class PipelineDetail(msgspec.Struct, kw_only=True):
    name: str
    status: str
    task: str | None
    target: str
    timestamp: str | None
    id: str | None
    schema: dict[str, str] | None
    production: ModelInfo | None
    serving_version: int | None
    datasets: int
    rows: int
    models: int
    ingestions: dict[str, int]


class ModelList(msgspec.Struct, kw_only=True):
    pipeline: str
    models: list[ModelInfo]


class IngestionList(msgspec.Struct, kw_only=True):
    pipeline: str
    ingestions: list[IngestionInfo]


class EventInfo(msgspec.Struct, kw_only=True):
    id: int
    ts: str
    kind: str
    level: str
    pipeline: str | None
    message: str
    details: dict[str, Any]


class EventList(msgspec.Struct, kw_only=True):
    events: list[EventInfo]


class PredictRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rows: list[dict[str, Any]]


class PredictResponse(msgspec.Struct, kw_only=True):
    model_version: int
    predictions: list[Any]
    prediction_ids: list[str]


class PromoteResponse(msgspec.Struct, kw_only=True):
    pipeline: str
    version: int
    previous_version: int | None


class RetrainResponse(msgspec.Struct, kw_only=True):
    pipeline: str
    started: bool
    message: str
