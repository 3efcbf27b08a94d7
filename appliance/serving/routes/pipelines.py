"""Pipelines: the list with each one's status and production version, and one pipeline's
detail (schema, production model, counts)."""

from litestar import get
from litestar.params import FromPath

from appliance.api_types import PipelineDetail, PipelineList, PipelineSummary
from appliance.models import primary_metric
from appliance.serving.context import Context, ServingContext
from appliance.serving.errors import ERRORS_HOST, ERRORS_PIPELINE
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


ROUTES = [pipelines, pipeline]
