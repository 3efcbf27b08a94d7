"""Pipelines: the list with each one's status and production version, one pipeline's
detail (schema, production model, counts), and deleting one (admin).

The console asks for the list and the detail every 1.5 s, beside predictions: they are
answered on a worker thread (never on the event loop, where a wait for the store's lock
would hold up every prediction), from counts SQLite keeps in its indexes, never by decoding
every data set, ingestion or model of a pipeline's history.
"""

from litestar import Response, delete, get, route
from litestar.params import FromPath, FromQuery

from appliance.api_types import PipelineDeleted, PipelineDetail, PipelineList, PipelineSummary
from appliance.models import primary_metric
from appliance.serving.auth import admin_guard
from appliance.serving.context import Context, ServingContext
from appliance.serving.errors import ERRORS_ADMIN, ERRORS_HOST, ERRORS_PIPELINE, error_spec
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.routes.shared import known_pipeline, model_info


def status_of(context: ServingContext, name: str, datasets: int | None = None) -> str:
    """``datasets``: the pipeline's data set count, when the caller has it."""
    if context.trainer.busy(name):
        return "training"
    if context.live.get(name) is not None:
        return "serving"
    if name in context.load_failures:
        return "load_failed"
    if datasets is None:
        datasets = context.store.dataset_totals(name)[0]
    return "waiting_for_model" if datasets else "waiting_for_data"


def summary(context: ServingContext, name: str) -> PipelineSummary:
    store, settings = context.store, context.settings
    record = store.pipeline(name)
    prod = store.production_summary(name)  # (version, task, metrics)
    datasets, rows, held = store.dataset_totals(name)
    task = record.task if record else None
    metric_name = (primary_metric(prod[1], settings.pipeline(name).train.metric)
                   if prod else None)
    live = context.live.get(name)
    return PipelineSummary(
        name=name, status=status_of(context, name, datasets), task=task,
        production_version=prod[0] if prod else None,
        serving_version=live.version if live else None,
        primary_metric=metric_name,
        primary_metric_value=prod[2].get(metric_name) if prod and metric_name else None,
        datasets=datasets, rows=rows, last_ingestion=store.last_ingestion_at(name),
        held=held,
    )


@get("/v1/pipelines", sync_to_thread=True, tags=["pipelines"], responses=ERRORS_HOST)
def pipelines(context: Context) -> PipelineList:
    """Every pipeline with its status and production version."""
    return PipelineList(pipelines=[context.monitor.fill_summary(summary(context, n))
                                   for n in context.pipeline_names()])


@get("/v1/pipelines/{name:str}", sync_to_thread=True, tags=["pipelines"],
     responses={**ERRORS_HOST, **ERRORS_PIPELINE})
def pipeline(name: FromPath[str], context: Context) -> PipelineDetail:
    """One pipeline: schema, production model, counts (every file it received, by
    status)."""
    known_pipeline(context, name)
    store, predlog = context.store, context.predlog
    record = store.pipeline(name)
    cfg = context.settings.pipeline(name)
    prod = store.production_model(name)
    datasets, rows, held = store.dataset_totals(name)
    live = context.live.get(name)
    return PipelineDetail(
        name=name, status=status_of(context, name, datasets),
        task=record.task if record else cfg.task,
        target=cfg.target, timestamp=cfg.timestamp, id=cfg.id,
        schema=record.schema if record else None,
        production=model_info(prod) if prod else None,
        serving_version=live.version if live else None,
        datasets=datasets, rows=rows, models=store.model_count(name),
        ingestions=store.ingestion_status_counts(name),
        prediction_log=predlog.stats(name) if predlog is not None else None,
        held=store.held_versions(name) if held else [],
    )


@delete("/v1/pipelines/{name:str}", status_code=200, guards=[admin_guard],
        sync_to_thread=True, tags=["pipelines"], security=SECURITY_ADMIN,
        responses={**ERRORS_HOST, **ERRORS_ADMIN, **ERRORS_PIPELINE,
                   409: error_spec(409, "it trains, it serves a model (delete with "
                                        "force=true), it is a feature set declared in the "
                                        "config, or a file of it is still being ingested; "
                                        "nothing was deleted")})
def delete_pipeline(name: FromPath[str], context: Context, force: FromQuery[bool] = False
                    ) -> PipelineDeleted:
    """Admin: delete a pipeline: its data sets, models, records, predictions, monitoring and
    files (inbox/, processing/, archive/, rejected/, datasets/, models/). Refused while it
    trains, and while it serves a model unless `force=true`."""
    return context.delete_pipeline(name, force)


@route("/v1/pipelines/{name:str}", http_method=["OPTIONS"], include_in_schema=False,
       sync_to_thread=False)
def pipeline_options(name: FromPath[str]) -> Response[None]:
    """The methods of a pipeline's path. Litestar (2.25) makes a path's OPTIONS answer
    when the first handler of the path is registered, so DELETE, registered second, would
    be missing from its Allow header; this path declares its own, registered first."""
    return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS"})


ROUTES = [pipelines, pipeline_options, pipeline, delete_pipeline]
