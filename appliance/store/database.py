"""SQLite: the schema, its migrations and every query the appliance makes, composed here
into one :class:`Store`.

Every other package goes through the methods of :class:`Store`; none of them writes SQL.
The queries live by area, each a mixin over the shared connection:

- ``connection.py``: opening, the lock, ``_atomic``/``_rows``, whole-file checks, backups;
- ``migrations.py``: the schema, step by step;  ``records.py``: what readers get back;
- ``datasets.py``: pipelines, ingestions, data set versions, feedback files;
- ``models.py``: model versions and their stages;
- ``jobs_events.py``: the event log, training jobs and pending training requests;
- ``housekeeping.py``: retention of activity and versions, deleting a pipeline;
- ``predictions.py``: the prediction log and feedback outcomes;
- ``online_features.py``: the online feature store;
- ``ingest_attempts.py``: attempts at a file that did not end (crashes, no room);
- ``bundles_seen.py``: the files of the watched bundle source already handled;
- ``shadows.py``: shadow scoring (candidates beside production, their windows, outputs);
- ``rollouts.py``: the version under watch after a promotion (a restart resumes it);
- ``monitoring.py``: request windows, resources, drift, live performance, counts, retention.
"""

from __future__ import annotations

from appliance.store.bundles_seen import BundleSeenQueries
from appliance.store.connection import Connection
from appliance.store.datasets import DatasetQueries
from appliance.store.housekeeping import HousekeepingQueries
from appliance.store.ingest_attempts import IngestAttemptQueries
from appliance.store.jobs_events import EventAndJobQueries
from appliance.store.models import ModelQueries
from appliance.store.monitoring import MonitoringQueries
from appliance.store.online_features import OnlineFeatureQueries
from appliance.store.predictions import PredictionQueries
from appliance.store.rollouts import RolloutQueries
from appliance.store.shadows import ShadowQueries


class Store(
    Connection,
    DatasetQueries,
    ModelQueries,
    EventAndJobQueries,
    PredictionQueries,
    OnlineFeatureQueries,
    MonitoringQueries,
    HousekeepingQueries,
    IngestAttemptQueries,
    BundleSeenQueries,
    ShadowQueries,
    RolloutQueries,
):
    """The appliance's SQLite database. Thread-safe; one instance per process."""
