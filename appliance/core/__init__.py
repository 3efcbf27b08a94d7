"""The ground floor every stage stands on: settings, the state directory, errors, the
log line format and worker-thread priorities. Imports nothing else of the appliance.

``appliance.core.logs`` (the log line format) and ``appliance.core.sqlexpr`` (derived
features' expressions; it loads Polars, so it is imported where it is used) are public
modules too.
"""

from appliance.core.config import (
    DASK_INSTALL,
    DEFAULT_STATE_DIR,
    PIPELINE_NAME,
    TASK_METRICS,
    ConfigError,
    DaskSettings,
    DriftSettings,
    FeatureSetSettings,
    IngestSettings,
    MonitorSettings,
    PipelineSettings,
    ServerSettings,
    Settings,
    TrainSettings,
    cron_trigger,
    dask_missing,
    load,
    parse,
    reference,
    resolve_state_dir,
)
from appliance.core.errors import ApplianceError, preview
from appliance.core.statedir import StateDir, fsync_dir
from appliance.core.threads import lower_thread_priority, lower_to_idle

__all__ = [
    "DASK_INSTALL",
    "DEFAULT_STATE_DIR",
    "PIPELINE_NAME",
    "TASK_METRICS",
    "ApplianceError",
    "ConfigError",
    "DaskSettings",
    "DriftSettings",
    "FeatureSetSettings",
    "IngestSettings",
    "MonitorSettings",
    "PipelineSettings",
    "ServerSettings",
    "Settings",
    "StateDir",
    "TrainSettings",
    "cron_trigger",
    "dask_missing",
    "fsync_dir",
    "load",
    "lower_thread_priority",
    "lower_to_idle",
    "parse",
    "preview",
    "reference",
    "resolve_state_dir",
]
