"""The daemon's parts, built once and handed to the HTTP app and the jobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.api_types import DriftReport, PipelineDeleted, ScheduledJob
from appliance.core import Settings, StateDir
from appliance.features import FeatureStore
from appliance.ingest import Ingester
from appliance.jobs import Housekeeping, JobScheduler, SuspectBatches, Trainer
from appliance.models import Backtests, LiveModels, ModelImporter, PolicyParts, Registry
from appliance.monitoring import (
    Monitor,
    PredictionIds,
    PredictionLog,
    RolloutWatch,
    ShadowScoring,
    drift,
)
from appliance.serving import reads_need_token
from appliance.store import Events, IngestionRecord, Store


@dataclass
class Services:
    settings: Settings
    state: StateDir
    store: Store
    events: Events
    registry: Registry
    live: LiveModels
    trainer: Trainer
    ingester: Ingester
    scheduler: JobScheduler
    token: str
    monitor: Monitor
    features: FeatureStore
    housekeeping: Housekeeping
    suspects: SuspectBatches
    started: bool = False
    load_failures: dict[str, str] = field(default_factory=dict)
    # The prediction log (its writer is started and flushed by the daemon), the ids of
    # predictions, and the predict token when server.predict_token_required.
    predlog: PredictionLog | None = None
    prediction_ids: PredictionIds = field(default_factory=PredictionIds)
    predict_token: str | None = None
    # Every kept model version scored on the same newest held-out rows (cached).
    backtests: Backtests | None = None
    # The read token, when reads need one (the API listens beyond loopback).
    read_token: str | None = None
    # Imports of bundles and bare models, then the pipeline's promotion policy.
    importer: ModelImporter | None = None
    # Candidates shadowing production (promotion.policy = "shadow"), and the watch over a
    # newly promoted version (rollout.watch_seconds).
    shadows: ShadowScoring | None = None
    rollout: RolloutWatch | None = None

    @classmethod
    def build(cls, settings: Settings, state: StateDir) -> Services:
        state.create()
        store = Store.open(state.db)
        events = Events(store)
        registry = Registry(state, store)
        live = LiveModels(max_string_chars=settings.server.max_string_chars)
        trainer = Trainer(state, store, registry, events, settings, live)
        monitor = Monitor(store, settings, events, live, state.root,
                          training_busy=trainer.busy)

        def retrain_on_drift(pipeline: str, report: DriftReport | None) -> None:
            # The trainer checks the policy (retrain.on_drift) and that there is labelled
            # data newer than the production model; a running training already covers it.
            if report is not None and drift.alarm(report) and not trainer.busy(pipeline):
                trainer.on_drift(pipeline)

        features = FeatureStore(settings, store, state.root)
        features.load()
        trainer.builder.features = features
        suspects = SuspectBatches(state, store, events, settings, live, trainer, features)
        trainer.builder.unchecked = suspects.unchecked
        shadows = ShadowScoring(store, settings, events, live, trainer.production, registry,
                                features)
        trainer.builder.shadows = shadows
        rollout = RolloutWatch(store, settings, monitor.requests, trainer.production)

        def on_accepted(pipeline: str, record: IngestionRecord) -> None:
            if pipeline in settings.feature_sets:
                if record.dataset_path and record.dataset_version is not None:
                    keys = features.on_ingested(pipeline, record.dataset_path,
                                                record.dataset_version)
                    events.emit("features_updated",
                                f"{keys} keys updated in the online store from v"
                                f"{record.dataset_version}", pipeline=pipeline, keys=keys)
                    trainer.on_features_updated(
                        [p for p, cfg in settings.pipelines.items() if pipeline in cfg.join])
                return
            # Drift first, against the model that served until this data came; then its
            # labels: a batch with suspect labels and features that did not drift is held.
            with suspects.checking(pipeline, record.dataset_version):
                report = monitor.on_ingested(pipeline, record)
                held = suspects.on_accepted(pipeline, record,
                                            None if report is None else drift.alarm(report))
            if held:
                return
            trainer.on_ingested(pipeline, record)
            retrain_on_drift(pipeline, report)

        monitor.on_drift = retrain_on_drift
        ingester = Ingester(state, store, events, settings, on_accepted=on_accepted)
        server = settings.server
        predlog = PredictionLog(store, sample_rate=server.log_sample_rate,
                                max_pending=server.log_queue_max,
                                max_pending_bytes=server.log_queue_max_mb << 20,
                                flush_seconds=server.log_flush_seconds)
        predict_token = state.ensure_predict_token() if server.predict_token_required else None
        housekeeping = Housekeeping(state, store, events, settings, trainer, live,
                                    ingester.lock)
        read_token = state.ensure_read_token() if reads_need_token(server) else None
        return cls(settings=settings, state=state, store=store, events=events,
                   registry=registry, live=live, trainer=trainer, ingester=ingester,
                   scheduler=JobScheduler(trainer, settings), token=state.ensure_token(),
                   monitor=monitor, features=features, housekeeping=housekeeping,
                   suspects=suspects, predlog=predlog, predict_token=predict_token,
                   read_token=read_token, backtests=Backtests(state, store, registry),
                   shadows=shadows, rollout=rollout,
                   importer=ModelImporter(PolicyParts(state, store, events, settings,
                                                      trainer.production,
                                                      trainer.builder.apply_policy),
                                          registry))

    def load_production_models(self) -> None:
        """Load every pipeline's production model; one that fails is reported, not served."""
        for pipeline in self.store.pipelines():
            record = self.store.production_model(pipeline.name)
            if record is None:
                continue
            try:
                self.live.swap(self.registry.load(pipeline.name, record.version))
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                self.load_failures[pipeline.name] = message
                self.events.emit("model_load_failed", message, pipeline=pipeline.name,
                                 level="error", version=record.version)
                # The version that was production before it serves instead, if one loads.
                self.trainer.production.fall_back(pipeline.name, record.version, message)
            else:
                self.events.emit("model_loaded", f"serving v{record.version}",
                                 pipeline=pipeline.name, version=record.version)

    def pipeline_names(self) -> list[str]:
        names = {p.name for p in self.store.pipelines()} | set(self.settings.pipelines)
        return sorted(names - set(self.settings.feature_sets))

    def delete_pipeline(self, name: str, force: bool = False) -> PipelineDeleted:
        """Delete a pipeline (see :meth:`Housekeeping.delete_pipeline`)."""
        deleted = self.housekeeping.delete_pipeline(name, force)
        self.load_failures.pop(name, None)
        if self.shadows is not None:
            self.shadows.forget(name)
        if self.rollout is not None:
            self.rollout.watches.pop(name, None)
        return deleted

    def scheduled_jobs(self, pipeline: str) -> list[ScheduledJob]:
        """Jobs the scheduler will run for this pipeline, and the box-wide ones."""
        return self.scheduler.scheduled(pipeline)
