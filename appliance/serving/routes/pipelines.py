"""Pipelines: the list with each one's status and production version, one pipeline's
detail (schema, production model, counts), and deleting one (admin)."""

from litestar import Response, delete, get, route
from litestar.params import FromPath

from appliance.api_types import PipelineDeleted, PipelineDetail, PipelineList, PipelineSummary
from appliance.models import primary_metric
from appliance.serving.auth import admin_guard
from appliance.serving.context import Context, ServingContext
from appliance.serving.errors import ERRORS_ADMIN, ERRORS_HOST, ERRORS_PIPELINE, error_spec
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.routes.shared import known_pipeline, model_info


def status_of(context: ServingContext, name: str) -> str:
    if context.trainer.busy(name):
        return "training"
    if context.live.get(name) is not None:
        return "serving"
    if name in context.load_failures:
        return "load_failed"
    return "waiting_for_model" if context.store.datasets(name) else "waiting_for_data"


def summary(context: ServingContext, name: str) -> PipelineSummary:
    store, settings = context.store, context.settings
    record = store.pipeline(name)
    prod = store.production_model(name)
    datasets = store.datasets(name)
    last = store.ingestions(name, limit=1)
    task = record.task if record else None
    metric_name = (primary_metric(prod.task, settings.pipeline(name).train.metric)
                   if prod else None)
    live = context.live.get(name)
    return PipelineSummary(
        name=name, status=status_of(context, name), task=task,
        production_version=prod.version if prod else None,
        serving_version=live.version if live else None,
        primary_metric=metric_name,
        primary_metric_value=prod.metrics.get(metric_name) if prod and metric_name else None,
        datasets=len(datasets), rows=sum(d.rows for d in datasets),
        last_ingestion=last[0].finished_at if last else None,
        held=sum(d.status == "held" for d in datasets),
    )


@get("/v1/pipelines", sync_to_thread=False, tags=["pipelines"], responses=ERRORS_HOST)
def pipelines(context: Context) -> PipelineList:
    """Every pipeline with its status and production version."""
    return PipelineList(pipelines=[context.monitor.fill_summary(summary(context, n))
                                   for n in context.pipeline_names()])


@get("/v1/pipelines/{name:str}", sync_to_thread=False, tags=["pipelines"],
     responses={**ERRORS_HOST, **ERRORS_PIPELINE})
def pipeline(name: FromPath[str], context: Context) -> PipelineDetail:
    """One pipeline: schema, production model, counts."""
    known_pipeline(context, name)
    store, predlog = context.store, context.predlog
    record = store.pipeline(name)
    cfg = context.settings.pipeline(name)
    prod = store.production_model(name)
    datasets = store.datasets(name)
    counts: dict[str, int] = {}
    for ing in store.ingestions(name, limit=10_000):
        counts[ing.status] = counts.get(ing.status, 0) + 1
    live = context.live.get(name)
    return PipelineDetail(
        name=name, status=status_of(context, name),
        task=record.task if record else cfg.task,
        target=cfg.target, timestamp=cfg.timestamp, id=cfg.id,
        schema=record.schema if record else None,
        production=model_info(prod) if prod else None,
        serving_version=live.version if live else None,
        datasets=len(datasets), rows=sum(d.rows for d in datasets),
        models=len(store.models(name)), ingestions=counts,
        prediction_log=predlog.stats(name) if predlog is not None else None,
        held=[d.version for d in datasets if d.status == "held"],
    )


@delete("/v1/pipelines/{name:str}", status_code=200, guards=[admin_guard],
        sync_to_thread=True, tags=["pipelines"], security=SECURITY_ADMIN,
        responses={**ERRORS_HOST, **ERRORS_ADMIN, **ERRORS_PIPELINE,
                   409: error_spec(409, "it trains, it serves a model (delete with "
                                        "force=true), it is a feature set declared in the "
                                        "config, or a file of it is still being ingested; "
                                        "nothing was deleted")})
def delete_pipeline(name: FromPath[str], context: Context, force: bool = False
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
