"""The in-process lab of the models tests: a real state directory with the daemon's own
Trainer and Ingester, driven directly so each case takes a fraction of a second."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from appliance.core import Settings, StateDir, parse
from appliance.ingest import Ingester
from appliance.jobs import Trainer
from appliance.models import LiveModels, Registry
from appliance.store import Events, Store
from tests.conftest import SAMPLES

MACHINES = {"target": "failed_within_24h", "timestamp": "timestamp", "id": "reading_id"}


@dataclass
class Lab:
    state: StateDir
    store: Store
    trainer: Trainer
    ingester: Ingester
    live: LiveModels

    def configure(self, raw: dict[str, Any]) -> None:
        settings = parse(raw)
        self.trainer.settings = self.trainer.builder.settings = settings
        self.ingester.settings = settings

    def ingest(self, pipeline: str, frame: pl.DataFrame, name: str) -> None:
        """A file through the real ingestion, as the inbox watcher hands it over."""
        folder = self.state.pipeline_dir(self.state.processing, pipeline)
        claimed = folder / f"{time.time_ns()}__{name}.parquet"
        frame.write_parquet(claimed)
        outcome = self.ingester.process(claimed, pipeline)
        assert outcome.record.status == "accepted", outcome.record.reason

    def train(self, pipeline: str, tune: int | None = None):
        return self.trainer.train_and_gate(pipeline, "test", tune_trials=tune)

    def meta(self, pipeline: str, version: int) -> dict[str, Any]:
        return json.loads((self.state.models / pipeline / str(version) / "model.json")
                          .read_text())


@pytest.fixture
def lab(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.create()
    store = Store.open(state.db)
    events = Events(store)
    live = LiveModels()
    settings = Settings()
    trainer = Trainer(state, store, Registry(state, store), events, settings, live)
    ingester = Ingester(state, store, events, settings)
    yield Lab(state, store, trainer, ingester, live)
    trainer.shutdown()
    store.close()


def machines(name: str) -> pl.DataFrame:
    return pl.read_csv(SAMPLES / name, try_parse_dates=True)
