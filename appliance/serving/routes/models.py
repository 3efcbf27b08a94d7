"""Models: a pipeline's versions, and the admin's actions on them (promote or roll back,
retrain)."""

from litestar import get, post
from litestar.params import FromPath, FromQuery, JSONBody

from appliance.api_types import (
    ModelComparison,
    ModelList,
    PromoteResponse,
    RetrainRequest,
    RetrainResponse,
)
from appliance.core import ApplianceError
from appliance.serving.auth import admin_guard
from appliance.serving.context import Context
from appliance.serving.errors import (
    ERRORS_ADMIN,
    ERRORS_HOST,
    ERRORS_PIPELINE,
    ERRORS_QUERY,
    error_spec,
)
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.routes.shared import MAX_INT64, known_pipeline, model_info


@get("/v1/pipelines/{name:str}/models", sync_to_thread=True, tags=["models"],
     responses={**ERRORS_HOST, **ERRORS_PIPELINE, **ERRORS_QUERY})
def models(name: FromPath[str], context: Context, compare: FromQuery[bool] = False
           ) -> ModelList:
    """Versions with metrics, lineage and stage, newest first (on a worker thread).

    Each version's `metrics` are on its own held-out rows. With `compare=true`,
    `comparison` scores every kept version on the same rows, the newest version's
    held-out rows, with each one's gain over production there (the backtest; computed
    once per new version or production change)."""
    known_pipeline(context, name)
    comparison = None
    if compare:
        backtests = context.backtests
        comparison = (backtests.compare(name) if backtests is not None else ModelComparison(
                          metric=None, rows_from_version=None, rows=0, note="not available"))
    shadows = {s.version: s for s in context.store.shadows(name)}
    return ModelList(pipeline=name, models=[model_info(r, context, shadows)
                                            for r in context.store.models(name)],
                     comparison=comparison)


@post("/v1/pipelines/{name:str}/models/{version:int}/promote", status_code=200,
      guards=[admin_guard], sync_to_thread=True, tags=["models"], security=SECURITY_ADMIN,
      responses={**ERRORS_HOST, **ERRORS_ADMIN,
                 404: error_spec(404, "no such pipeline, or no such version"),
                 409: error_spec(409, "the model failed its hash check or could not be "
                                      "loaded; it was not promoted and the serving model "
                                      "stays")})
def promote(name: FromPath[str], version: FromPath[int], context: Context) -> PromoteResponse:
    """Admin: make a version production (rollback too).

    The version is verified (hash), loaded and warmed on a worker thread, then swapped
    in at once: requests in flight finish on the model they started with.
    """
    known_pipeline(context, name)
    if not 0 < version <= MAX_INT64 or context.store.model(name, version) is None:
        raise ApplianceError(
            "unknown_model", f"pipeline `{name}` has no model version {version}",
            {"pipeline": name, "version": version}, status=404,
        )
    previous = context.trainer.production.promote(name, version, "promoted by an operator")
    return PromoteResponse(pipeline=name, version=version, previous_version=previous)


@post("/v1/pipelines/{name:str}/retrain", status_code=202, guards=[admin_guard],
      sync_to_thread=True, tags=["models"], security=SECURITY_ADMIN,
      responses={**ERRORS_HOST, **ERRORS_PIPELINE, **ERRORS_ADMIN})
def retrain(name: FromPath[str], context: Context,
            data: JSONBody[RetrainRequest | None] = None) -> RetrainResponse:
    """Admin: start a training job (or queue one after the running job). The body is
    optional: `{"tune_trials": N}` adds a hyperparameter search of N trials."""
    known_pipeline(context, name)
    tune = data.tune_trials if data is not None else None
    started = context.trainer.request(name, "manual", tune_trials=tune)
    msg = "training started" if started else "a training job is running; one more follows"
    if tune:
        msg += f", with a search of {tune} trials"
    return RetrainResponse(pipeline=name, started=started, message=msg)


ROUTES = [models, promote, retrain]
