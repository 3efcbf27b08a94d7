"""Ingest: the drop folder watched, files claimed, read with Polars, checked against the
pipeline's schema, stored as data set versions, or refused with a reason."""

from appliance.ingest.ingester import FEEDBACK_ID, Ingester
from appliance.ingest.names import safe_name
from appliance.ingest.outcomes import Outcome
from appliance.ingest.watcher import InboxWatcher

__all__ = [
    "FEEDBACK_ID",
    "InboxWatcher",
    "Ingester",
    "Outcome",
    "safe_name",
]
