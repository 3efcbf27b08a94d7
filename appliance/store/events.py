"""The event log: one call writes an event to SQLite and to the log, so the TUI's feed,
``GET /v1/events`` and the journal always agree."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from appliance.core.logs import event as log_event
from appliance.store.database import Store

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

log = logging.getLogger("appliance")

# The kinds of event, with what each means; the README lists them from here.
KINDS = {
    "started": "the daemon started",
    "stopped": "the daemon stopped",
    "ingested": "a file was accepted as a new data set version",
    "duplicate": "a file identical to one already taken was archived, not ingested again",
    "refused": "a file was refused; the reason is in rejected/<pipeline>/<file>.reason.json",
    "feedback": "a feedback file (prediction_id and the target) was stored as outcomes",
    "waiting_for_space": "files wait in the inbox: the state dir's disk is nearly full",
    "space_available": "disk space is back; files waiting in the inbox are taken",
    "ingest_deferred": "a file went back to the inbox because the box ran out of file "
                       "descriptors or memory while ingesting it; it is taken again",
    "ingest_interrupted": "the daemon stopped while ingesting a file (out of memory, a crash "
                          "or a kill); the file is taken again, and refused the next time",
    "training_waiting": "a pipeline has new data, but a feature set it joins has no data yet: "
                        "it trains once that feature set's first file is taken",
    "training_started": "a training job started",
    "training_memory_capped": "a training's data window would not fit in the memory it may "
                              "use (train.memory_limit_mb): it trains on the newest rows "
                              "that fit",
    "trained": "a training job registered a new model version",
    "training_failed": "a training job failed",
    "training_cancelled": "a training job was cancelled because the daemon stopped",
    "training_retry_scheduled": "a failed training job will be retried after a backoff",
    "training_resumed": "at start, a training that a stop, a crash or a power cut left undone "
                        "(or new data no model has seen) runs again",
    "promoted": "a model version was made production",
    "not_promoted": "a new model version was kept out of production by the gate",
    "features_updated": "a feature set's new version updated the online store",
    "model_loaded": "a production model was loaded for serving",
    "model_load_failed": "a model could not be loaded; the previous one keeps serving",
    "config_reloaded": "the config was re-read (SIGHUP); the message lists what changed",
    "config_reload_failed": "the config could not be re-read; the running config is kept",
    "drift_detected": "a new data set, or recent prediction inputs, drifted from the "
                      "production model's training data (or its predictions did)",
    "performance_degraded": "the live metric from feedback fell below the validation metric "
                            "by more than monitor.performance_tolerance",
    "disk_pressure": "the state directory's disk has less than monitor.min_free_disk_mb free",
    "memory_pressure": "the box has less than monitor.min_available_memory_mb available",
    "pipeline_deleted": "an operator deleted a pipeline: its data, models, records and files",
    "suspect_labels": "the production model does far worse on a new labelled batch than on "
                      "its validation rows while the features did not drift: its labels are "
                      "suspect, and the batch is held from training (retrain.hold_suspect)",
    "dataset_released": "an operator released a held data set version: it trains like any",
    "dataset_discarded": "an operator discarded a held data set version: it never trains; "
                         "its files are kept",
    "rolled_back": "the production model could not be loaded at start, or a newly promoted "
                   "version did significantly worse than the one before it while under watch "
                   "(rollout.watch_seconds: errors, p99 latency or live performance), so the "
                   "version that was production before it serves again; the event names the "
                   "cause",
    "shadow_started": "a candidate under the shadow policy started scoring a share of live "
                      "requests beside production (shadow.sample_rate)",
    "awaiting_promotion": "a candidate under the manual policy waits for `appliance promote`",
    "bundle_imported": "a model bundle or a bare LightGBM model was imported as a candidate "
                       "(its promotion policy follows)",
    "bundle_refused": "a model bundle or model file was refused (unsigned, bad signature, "
                      "untrusted key, digest mismatch, unsafe member, incompatible...); "
                      "nothing was registered",
}


class Events:
    def __init__(self, store: Store) -> None:
        self.store = store

    def emit(
        self, kind: str, message: str, *, pipeline: str | None = None, level: str = "info",
        **details: Any,
    ) -> None:
        log_event(log, _LEVELS.get(level, logging.INFO), kind, pipeline=pipeline,
                  msg=message, **details)
        try:
            self.store.add_event(kind, level, message, pipeline=pipeline, details=details)
        except (sqlite3.Error, OSError) as exc:
            # A full disk: the event is in the journal (above); what emitted it goes on
            # (a reload still answers systemd, a refusal is still refused).
            log_event(log, logging.ERROR, "event_not_stored", kind=kind,
                      error=f"{type(exc).__name__}: {exc}")
