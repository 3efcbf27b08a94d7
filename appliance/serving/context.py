"""What serving needs from the daemon, and how a route handler receives it.

The daemon builds the parts (its ``Services``) and hands them to :func:`create_app`; the
daemon sits above serving in the layers, so serving names what it uses as a Protocol,
:class:`ServingContext`, that the daemon's ``Services`` satisfies as it is, and never
imports the daemon. The app keeps the context in its ``state``; handlers receive it
through Litestar's dependency injection (:func:`provide_context`), guards and exception
handlers, which Litestar does not inject, read it from the app (:func:`context_of`).

Members are read-only properties so that a part may be any subtype (the daemon's
``Trainer`` for :class:`TrainerControls`). Settings are changed in place on SIGHUP, so
reading them through the context always sees the live values.
"""

from typing import Any, Protocol

from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from appliance.api_types import DatasetActionResponse, PipelineDeleted, ScheduledJob
from appliance.core import Settings
from appliance.features import FeatureStore
from appliance.models import Backtests, LiveModels, ModelImporter
from appliance.monitoring import (
    Monitor,
    PredictionIds,
    PredictionLog,
    RolloutWatch,
    ShadowScoring,
)
from appliance.store import Store

# The key of the context in the app's state.
CONTEXT_KEY = "serving_context"


class ProductionControls(Protocol):
    """What the routes ask of what serves: make a version production."""

    def promote(self, pipeline: str, version: int, reason: str) -> int | None: ...


class TrainerControls(Protocol):
    """What the routes ask of the trainer: is it busy, start a job, promote."""

    def busy(self, pipeline: str) -> bool: ...

    def request(self, pipeline: str, trigger: str, tune_trials: int | None = None) -> bool: ...

    @property
    def production(self) -> ProductionControls: ...


class HeldDatasets(Protocol):
    """What the routes ask about data sets held for suspect labels."""

    def release(self, pipeline: str, version: int) -> DatasetActionResponse: ...

    def discard(self, pipeline: str, version: int) -> DatasetActionResponse: ...


class ServingContext(Protocol):
    """The daemon's parts the HTTP API reads and drives."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def live(self) -> LiveModels: ...

    @property
    def trainer(self) -> TrainerControls: ...

    @property
    def monitor(self) -> Monitor: ...

    @property
    def features(self) -> FeatureStore: ...

    @property
    def suspects(self) -> HeldDatasets: ...

    @property
    def predlog(self) -> PredictionLog | None: ...

    @property
    def prediction_ids(self) -> PredictionIds: ...

    @property
    def shadows(self) -> ShadowScoring | None: ...  # candidates shadowing production

    @property
    def rollout(self) -> RolloutWatch | None: ...  # the watch after a promotion

    @property
    def backtests(self) -> Backtests | None: ...  # the models' comparison on the same rows

    @property
    def importer(self) -> ModelImporter | None: ...  # bundles and bare models (admin)

    @property
    def token(self) -> str: ...  # the admin token

    @property
    def predict_token(self) -> str | None: ...  # with server.predict_token_required

    @property
    def read_token(self) -> str | None: ...  # when reads need a token (off loopback)

    @property
    def started(self) -> bool: ...  # start-up is done (models loaded)

    @property
    def load_failures(self) -> dict[str, str]: ...  # pipeline -> why its model won't load

    def pipeline_names(self) -> list[str]: ...

    def scheduled_jobs(self, pipeline: str) -> list[ScheduledJob]: ...

    def delete_pipeline(self, name: str, force: bool = False) -> PipelineDeleted: ...


# How a handler declares the context: injected, not validated (it is the app's own object,
# and a Protocol can't be checked per request anyway).
Context = NamedDependency[SkipValidation[ServingContext]]


def provide_context(state: State) -> ServingContext:
    """The DI provider of :data:`Context`: the context kept in the app's state."""
    context: ServingContext = state[CONTEXT_KEY]
    return context


def context_of(connection: Any) -> ServingContext:
    """The context, for what Litestar does not inject (guards, exception handlers):
    ``connection`` is a request or any ASGI connection of the app."""
    context: ServingContext = connection.app.state[CONTEXT_KEY]
    return context
