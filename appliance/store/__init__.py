"""The one database: SQLite in WAL mode, its migrations, every query of every stage, and
the event log that writes to it. No other package holds SQL."""

from appliance.store.connection import monotonic_ms, now_iso
from appliance.store.database import Store
from appliance.store.events import KINDS, Events
from appliance.store.migrations import SCHEMA_VERSION
from appliance.store.records import (
    CountRecord,
    DatasetRecord,
    DriftRecord,
    EventRecord,
    IngestionRecord,
    JobRecord,
    LivePerformanceRecord,
    ModelRecord,
    PipelineRecord,
    ResourceRecord,
    RolloutWatchRecord,
    ShadowRecord,
    ShadowWindowRecord,
    TrainingRequestRecord,
    WindowRecord,
)
from appliance.store.shadows import merge_windows as merge_shadow_windows

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "CountRecord",
    "DatasetRecord",
    "DriftRecord",
    "EventRecord",
    "Events",
    "IngestionRecord",
    "JobRecord",
    "LivePerformanceRecord",
    "ModelRecord",
    "PipelineRecord",
    "ResourceRecord",
    "RolloutWatchRecord",
    "ShadowRecord",
    "ShadowWindowRecord",
    "Store",
    "TrainingRequestRecord",
    "WindowRecord",
    "merge_shadow_windows",
    "monotonic_ms",
    "now_iso",
]
