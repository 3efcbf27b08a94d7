"""The daemon's parts, built once and handed to the HTTP app and the jobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.api_types import ScheduledJob
from appliance.config import Settings
from appliance.events import Events
from appliance.ingest import Ingester
from appliance.predictor import LiveModels
from appliance.predlog import PredictionIds, PredictionLog
from appliance.registry import Registry
from appliance.scheduler import Trainer
from appliance.statedir import StateDir
from appliance.store import Store


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
    token: str
    started: bool = False
    load_failures: dict[str, str] = field(default_factory=dict)
    # The prediction log (its writer is started and flushed by the daemon), the ids of
    # predictions, and the predict token when server.predict_token_required.
    predlog: PredictionLog | None = None
    prediction_ids: PredictionIds = field(default_factory=PredictionIds)
    predict_token: str | None = None

    @classmethod
    def build(cls, settings: Settings, state: StateDir) -> Services:
        state.create()
        store = Store.open(state.db)
        events = Events(store)
        registry = Registry(state, store)
        live = LiveModels()
        trainer = Trainer(state, store, registry, events, settings, live)
        ingester = Ingester(state, store, events, settings, on_accepted=trainer.on_ingested)
        server = settings.server
        predlog = PredictionLog(store, sample_rate=server.log_sample_rate,
                                max_pending=server.log_queue_max,
                                flush_seconds=server.log_flush_seconds)
        predict_token = state.ensure_predict_token() if server.predict_token_required else None
        return cls(settings=settings, state=state, store=store, events=events,
                   registry=registry, live=live, trainer=trainer, ingester=ingester,
                   token=state.ensure_token(), predlog=predlog, predict_token=predict_token)

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
            else:
                self.events.emit("model_loaded", f"serving v{record.version}",
                                 pipeline=pipeline.name, version=record.version)

    def pipeline_names(self) -> list[str]:
        names = {p.name for p in self.store.pipelines()} | set(self.settings.pipelines)
        return sorted(names)

    def scheduled_jobs(self, pipeline: str) -> list[ScheduledJob]:
        """Jobs the scheduler will run for this pipeline. Until periodic retraining exists
        (the retraining issue), training runs only on new data and on request."""
        return []
