"""The HTTP API: a Litestar app over the daemon's services.

Handlers are small and synchronous where the work is (a prediction is microseconds of
LightGBM, cheaper than a hop to a thread); everything slow is handed to the daemon's jobs.
Every error a client sees is an :class:`ErrorBody`; none carries a stack trace.
"""

import hmac
import logging
import secrets
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from appliance import __version__
from appliance.api_types import (
    DriftResponse,
    ErrorBody,
    EventInfo,
    EventList,
    Health,
    IngestionInfo,
    IngestionList,
    JobInfo,
    JobsResponse,
    ModelInfo,
    ModelList,
    PipelineDetail,
    PipelineList,
    PipelineMetrics,
    PipelineSummary,
    PredictRequest,
    PredictResponse,
    PromoteResponse,
    Ready,
    RetrainRequest,
    RetrainResponse,
    SystemResponse,
)
from appliance.errors import ApplianceError
from appliance.features_api import feature_set_routes
from appliance.metrics import primary_metric
from appliance.services import Services
from appliance.store import ModelRecord

log = logging.getLogger("appliance.serve")


def _error(status: int, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description)


ERRORS_PIPELINE = {404: _error(404, "no such pipeline")}
ERRORS_ADMIN = {401: _error(401, "missing or wrong bearer token")}


def _model_info(r: ModelRecord) -> ModelInfo:
    return ModelInfo(version=r.version, stage=r.stage, task=r.task, metrics=r.metrics,
                     lineage=r.lineage, decision=r.decision, created_at=r.created_at,
                     promoted_at=r.promoted_at)


def create_app(services: Services) -> Litestar:
    store = services.store
    settings = services.settings

    def known(name: str) -> None:
        if name not in settings.pipelines and store.pipeline(name) is None:
            raise ApplianceError(
                "unknown_pipeline",
                f"no pipeline `{name}`; a pipeline exists once its folder inbox/{name}/ has "
                "received a file, or it is declared in appliance.toml",
                {"pipeline": name}, status=404,
            )

    def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), services.token.encode()
        ):
            raise NotAuthorizedException(
                "this route needs the admin token: Authorization: Bearer <token from the "
                "state directory's `token` file>"
            )

    def status_of(name: str) -> str:
        if services.trainer.busy(name):
            return "training"
        if services.live.get(name) is not None:
            return "serving"
        if name in services.load_failures:
            return "load_failed"
        return "waiting_for_model" if store.datasets(name) else "waiting_for_data"

    def summary(name: str) -> PipelineSummary:
        record = store.pipeline(name)
        prod = store.production_model(name)
        datasets = store.datasets(name)
        last = store.ingestions(name, limit=1)
        task = record.task if record else None
        metric_name = (primary_metric(prod.task, settings.pipeline(name).train.metric)
                       if prod else None)
        live = services.live.get(name)
        return PipelineSummary(
            name=name, status=status_of(name), task=task,
            production_version=prod.version if prod else None,
            serving_version=live.version if live else None,
            primary_metric=metric_name,
            primary_metric_value=prod.metrics.get(metric_name) if prod and metric_name else None,
            datasets=len(datasets), rows=sum(d.rows for d in datasets),
            last_ingestion=last[0].finished_at if last else None,
        )

    @get("/health", sync_to_thread=False, tags=["health"])
    def health() -> Health:
        """Liveness: 200 while the process serves."""
        return Health(status="ok", version=__version__)

    @get("/ready", sync_to_thread=False, tags=["health"],
         responses={503: ResponseSpec(data_container=Ready, description="not ready yet")})
    def ready() -> Response[Ready]:
        """200 once started and every pipeline with a production model has it loaded."""
        waiting = []
        for p in store.pipelines():
            prod = store.production_model(p.name)
            live = services.live.get(p.name)
            if prod is not None and (live is None or live.version != prod.version):
                waiting.append(p.name)
        ok = services.started and not waiting
        body = Ready(ready=ok, models=services.live.versions(), waiting_for=waiting)
        return Response(body, status_code=200 if ok else 503)

    @get("/v1/pipelines", sync_to_thread=False, tags=["pipelines"])
    def pipelines() -> PipelineList:
        """Every pipeline with its status and production version."""
        return PipelineList(pipelines=[services.monitor.fill_summary(summary(n))
                                       for n in services.pipeline_names()])

    @get("/v1/pipelines/{name:str}", sync_to_thread=False, tags=["pipelines"],
         responses=ERRORS_PIPELINE)
    def pipeline(name: FromPath[str]) -> PipelineDetail:
        """One pipeline: schema, production model, counts."""
        known(name)
        record = store.pipeline(name)
        cfg = settings.pipeline(name)
        prod = store.production_model(name)
        datasets = store.datasets(name)
        counts: dict[str, int] = {}
        for ing in store.ingestions(name, limit=10_000):
            counts[ing.status] = counts.get(ing.status, 0) + 1
        live = services.live.get(name)
        return PipelineDetail(
            name=name, status=status_of(name), task=record.task if record else cfg.task,
            target=cfg.target, timestamp=cfg.timestamp, id=cfg.id,
            schema=record.schema if record else None,
            production=_model_info(prod) if prod else None,
            serving_version=live.version if live else None,
            datasets=len(datasets), rows=sum(d.rows for d in datasets),
            models=len(store.models(name)), ingestions=counts,
        )

    @post("/v1/pipelines/{name:str}/predict", status_code=200, sync_to_thread=False,
          tags=["predict"], responses={
              **ERRORS_PIPELINE,
              400: _error(400, "the body is not a valid request"),
              413: _error(413, "the body or the batch is too large"),
              422: _error(422, "a row does not match the model's features"),
              503: _error(503, "the pipeline has no model yet; retry later"),
          })
    def predict(name: FromPath[str], data: JSONBody[PredictRequest]) -> PredictResponse:
        """Predict one row or a batch. Features are matched by name; null means missing."""
        model = services.live.get(name)
        if model is None:
            known(name)
            raise ApplianceError(
                "no_model", f"pipeline `{name}` has no model in production yet; retry later",
                {"pipeline": name}, status=503,
            )
        rows = data.rows
        if not rows:
            raise ApplianceError("empty_batch", "`rows` is empty; send at least one row",
                                 {"field": "rows"}, status=422)
        limit = settings.server.max_batch_rows
        if len(rows) > limit:
            raise ApplianceError(
                "batch_too_large", f"{len(rows)} rows in one call; at most {limit} "
                "(server.max_batch_rows)", {"rows": len(rows), "limit": limit}, status=413,
            )
        predictions = model.predict_rows(rows)
        services.monitor.requests.count_rows(name, len(rows))
        ids = [secrets.token_hex(8) for _ in rows]
        return PredictResponse(model_version=model.version, predictions=predictions,
                               prediction_ids=ids)

    @get("/v1/pipelines/{name:str}/models", sync_to_thread=False, tags=["models"],
         responses=ERRORS_PIPELINE)
    def models(name: FromPath[str]) -> ModelList:
        """Versions with metrics, lineage and stage, newest first."""
        known(name)
        return ModelList(pipeline=name, models=[_model_info(r) for r in store.models(name)])

    @post("/v1/pipelines/{name:str}/models/{version:int}/promote", status_code=200,
          guards=[admin_guard], sync_to_thread=True, tags=["models"],
          responses={**ERRORS_PIPELINE, **ERRORS_ADMIN,
                     409: _error(409, "the model's files are damaged; not promoted")})
    def promote(name: FromPath[str], version: FromPath[int]) -> PromoteResponse:
        """Admin: make a version production (rollback too)."""
        known(name)
        previous = services.trainer.promote(name, version, "promoted by an operator")
        return PromoteResponse(pipeline=name, version=version, previous_version=previous)

    @post("/v1/pipelines/{name:str}/retrain", status_code=202, guards=[admin_guard],
          sync_to_thread=False, tags=["models"], responses={**ERRORS_PIPELINE, **ERRORS_ADMIN})
    def retrain(name: FromPath[str],
                data: JSONBody[RetrainRequest | None] = None) -> RetrainResponse:
        """Admin: start a training job (or queue one after the running job). The body is
        optional: `{"tune_trials": N}` adds a hyperparameter search of N trials."""
        known(name)
        tune = data.tune_trials if data is not None else None
        started = services.trainer.request(name, "manual", tune_trials=tune)
        msg = "training started" if started else "a training job is running; one more follows"
        if tune:
            msg += f", with a search of {tune} trials"
        return RetrainResponse(pipeline=name, started=started, message=msg)

    @get("/v1/pipelines/{name:str}/ingestions", sync_to_thread=False, tags=["data"],
         responses=ERRORS_PIPELINE)
    def ingestions(name: FromPath[str], limit: FromQuery[int] = 100) -> IngestionList:
        """Accepted and refused files, newest first, with reasons."""
        known(name)
        records = store.ingestions(name, limit=max(1, min(limit, 1000)))
        return IngestionList(pipeline=name, ingestions=[
            IngestionInfo(id=r.id, file_name=r.file_name, status=r.status, code=r.code,
                          reason=r.reason, details=r.details, warnings=r.warnings, rows=r.rows,
                          columns=r.columns, size_bytes=r.size_bytes, sha256=r.sha256,
                          dataset_version=r.dataset_version, received_at=r.received_at,
                          finished_at=r.finished_at, duration_ms=r.duration_ms,
                          dataset_path=r.dataset_path)
            for r in records
        ])

    @get("/v1/pipelines/{name:str}/jobs", sync_to_thread=False, tags=["jobs"],
         responses=ERRORS_PIPELINE)
    def jobs(name: FromPath[str], limit: FromQuery[int] = 50) -> JobsResponse:
        """Scheduled jobs with their next run, and the history of job runs, newest first."""
        known(name)
        history = [
            JobInfo(id=j.id, pipeline=j.pipeline, kind=j.kind, trigger=j.trigger,
                    status=j.status, started_at=j.started_at, finished_at=j.finished_at,
                    model_version=j.model_version, error=j.error)
            for j in store.jobs(name, limit=max(1, min(limit, 1000)))
        ]
        return JobsResponse(pipeline=name, scheduled=services.scheduled_jobs(name),
                            history=history)

    @get("/v1/events", sync_to_thread=False, tags=["events"])
    def events(pipeline: FromQuery[str | None] = None, after: FromQuery[int] = 0,
               limit: FromQuery[int] = 200) -> EventList:
        """The event log, newest first: ingested, refused, trained, promoted, errors."""
        rows = store.events(pipeline=pipeline, after_id=after, limit=max(1, min(limit, 1000)))
        return EventList(events=[
            EventInfo(id=e.id, ts=e.ts, kind=e.kind, level=e.level, pipeline=e.pipeline,
                      message=e.message, details=e.details) for e in rows
        ])

    # --- monitoring -------------------------------------------------------------------

    monitor = services.monitor
    prometheus_registry = CollectorRegistry(auto_describe=False)
    prometheus_registry.register(monitor.collector())

    def time_range(seconds: float, resolution: str) -> tuple[float, str]:
        if resolution not in ("auto", "raw", "hourly"):
            raise ApplianceError(
                "invalid_request", f"resolution `{resolution}`: expected auto, raw or hourly",
                {"field": "resolution"}, status=400)
        longest = settings.monitor.rollup_retention_days * 86400
        return max(1.0, min(float(seconds), longest)), resolution

    @get("/metrics", sync_to_thread=True, tags=["monitoring"], media_type=CONTENT_TYPE_LATEST)
    def prometheus() -> Response[bytes]:
        """Prometheus text format: requests, latency, errors, served versions, drift,
        live performance, ingestion and training counts and durations, resources."""
        return Response(generate_latest(prometheus_registry), media_type=CONTENT_TYPE_LATEST)

    @get("/v1/pipelines/{name:str}/drift", sync_to_thread=True, tags=["monitoring"],
         responses=ERRORS_PIPELINE)
    def drift(name: FromPath[str], limit: FromQuery[int] = 100) -> DriftResponse:
        """The latest drift report (per feature and of the predictions) and the history of
        checks, oldest first."""
        known(name)
        return monitor.drift_response(name, limit=max(1, min(limit, 1000)))

    @get("/v1/pipelines/{name:str}/metrics", sync_to_thread=True, tags=["monitoring"],
         responses=ERRORS_PIPELINE)
    def pipeline_metrics(name: FromPath[str], seconds: FromQuery[float] = 3600.0,
                         resolution: FromQuery[str] = "auto") -> PipelineMetrics:
        """Request windows over the last `seconds` (raw 10-second windows up to 6 hours,
        hourly roll-ups beyond, or as `resolution` says), and live performance. Windows
        without requests are absent."""
        known(name)
        span, res = time_range(seconds, resolution)
        return monitor.pipeline_metrics(name, span, res)

    @get("/v1/system", sync_to_thread=True, tags=["monitoring"])
    def system(seconds: FromQuery[float] = 3600.0,
               resolution: FromQuery[str] = "auto") -> SystemResponse:
        """Process and box resources over the last `seconds` (raw samples up to 6 hours,
        hourly roll-ups beyond: the mean of CPU and load, the worst of the rest)."""
        span, res = time_range(seconds, resolution)
        return monitor.system(span, res)

    def on_appliance_error(_: Request[Any, Any, Any], exc: ApplianceError) -> Response[Any]:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return Response(ErrorBody(code=exc.code, message=exc.message, details=exc.details),
                        status_code=exc.status, headers=headers)

    def on_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
        problems = [str(e.get("message", e)) if isinstance(e, dict) else str(e)
                    for e in (exc.extra or [])]
        message = "; ".join(problems) or exc.detail
        return Response(ErrorBody(code="invalid_request", message=message,
                                  details={"problems": problems}), status_code=400)

    def on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        return Response(ErrorBody(code=code, message=exc.detail), status_code=exc.status_code,
                        headers=exc.headers)

    def on_crash(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.error("request_failed path=%s error=%r", request.url.path, exc, exc_info=exc)
        return Response(ErrorBody(code="internal_error",
                                  message="the appliance failed on this request; see its log"),
                        status_code=500)

    app = Litestar(
        route_handlers=[health, ready, pipelines, pipeline, predict, models, promote, retrain,
                        ingestions, jobs, events, prometheus, drift, pipeline_metrics, system,
                        *feature_set_routes(services)],
        exception_handlers={
            ApplianceError: on_appliance_error,
            ValidationException: on_validation_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(title="appliance", version=__version__),
        logging_config=None,
        debug=False,
    )
    # Request metrics wrap the whole app, outside Litestar's own layers: cheaper than a
    # Litestar middleware, and they see every answer, errors of the framework included.
    app.asgi_handler = monitor.instrument(app.asgi_handler)
    return app
