"""Messages the pollers post: each carries one fetched snapshot, applied on the main thread.

A newer snapshot replaces an older one still queued (``can_replace``), so a slow screen
never works through a backlog of stale data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from appliance.api_types import (
    DriftResponse,
    EventInfo,
    FeatureSetList,
    IngestionList,
    JobsResponse,
    LatestExplanation,
    ModelList,
    PipelineDetail,
    PipelineList,
    PipelineMetrics,
    SystemResponse,
)
from tui.client import NotAvailable


@dataclass
class ConnectionLost(Message):
    """No answer from the daemon; the app shows the banner and starts reconnecting."""

    url: str
    reason: str


@dataclass
class ConnectionRestored(Message):
    """The daemon answers again."""

    url: str


@dataclass
class OverviewSnapshot(Message, bubble=False):
    """What the overview shows: pipelines, new events, the box's resources."""

    pipelines: PipelineList
    new_events: list[EventInfo]
    system: SystemResponse | NotAvailable

    def can_replace(self, message: Message) -> bool:
        # Called on the older of two queued snapshots: it may be dropped for the newer one,
        # unless it carries events (they are deltas, not state).
        return isinstance(message, OverviewSnapshot) and not self.new_events


@dataclass
class PipelineSnapshot(Message, bubble=False):
    """One pipeline's header, and the data of whichever tabs were fetched."""

    detail: PipelineDetail
    ingestions: IngestionList | None = None
    models: ModelList | None = None
    drift: DriftResponse | NotAvailable | None = None
    metrics: PipelineMetrics | NotAvailable | None = None
    jobs: JobsResponse | None = None
    feature_sets: FeatureSetList | NotAvailable | None = None
    explanation: LatestExplanation | NotAvailable | None = None
    tabs: frozenset[str] = field(default_factory=frozenset)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PipelineSnapshot) and message.tabs >= self.tabs
