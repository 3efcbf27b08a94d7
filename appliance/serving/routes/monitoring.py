"""Monitoring: Prometheus' ``/metrics``, a pipeline's drift and request windows, and the
box's resources."""

from litestar import Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, SkipValidation
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from appliance.api_types import DriftResponse, PipelineMetrics, SystemResponse
from appliance.core import ApplianceError
from appliance.monitoring import CandidateCollector
from appliance.serving.context import Context, ServingContext
from appliance.serving.errors import ERRORS_HOST, ERRORS_PIPELINE, ERRORS_QUERY
from appliance.serving.routes.shared import known_pipeline

# The key of the Prometheus registry in the app's state.
METRICS_REGISTRY_KEY = "prometheus_registry"


def metrics_registry(context: ServingContext) -> CollectorRegistry:
    """The registry ``/metrics`` renders: the monitor's collector and the candidates' (shadows,
    the rollout's watch), one per app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(context.monitor.collector())
    registry.register(CandidateCollector(context.shadows, context.rollout))
    return registry


def provide_metrics_registry(state: State) -> CollectorRegistry:
    """The DI provider of the app's Prometheus registry, kept in its state."""
    registry: CollectorRegistry = state[METRICS_REGISTRY_KEY]
    return registry


def time_range(context: ServingContext, seconds: float, resolution: str) -> tuple[float, str]:
    if resolution not in ("auto", "raw", "hourly"):
        raise ApplianceError(
            "invalid_request", f"resolution `{resolution}`: expected auto, raw or hourly",
            {"field": "resolution"}, status=400)
    longest = context.settings.monitor.rollup_retention_days * 86400
    return max(1.0, min(float(seconds), longest)), resolution


@get("/metrics", sync_to_thread=True, tags=["monitoring"], media_type=CONTENT_TYPE_LATEST,
     responses=ERRORS_HOST,
     dependencies={"registry": Provide(provide_metrics_registry, sync_to_thread=False)})
def prometheus(registry: NamedDependency[SkipValidation[CollectorRegistry]]) -> Response[bytes]:
    """Prometheus text format: requests, latency, errors, served versions, drift,
    live performance, ingestion and training counts and durations, resources."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@get("/v1/pipelines/{name:str}/drift", sync_to_thread=True, tags=["monitoring"],
     responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
def drift(name: FromPath[str], context: Context, limit: FromQuery[int] = 100) -> DriftResponse:
    """The latest drift report (per feature and of the predictions) and the history of
    checks, oldest first."""
    known_pipeline(context, name)
    return context.monitor.drift_response(name, limit=max(1, min(limit, 1000)))


@get("/v1/pipelines/{name:str}/metrics", sync_to_thread=True, tags=["monitoring"],
     responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
def pipeline_metrics(name: FromPath[str], context: Context,
                     seconds: FromQuery[float] = 3600.0,
                     resolution: FromQuery[str] = "auto") -> PipelineMetrics:
    """Request windows over the last `seconds` (raw 10-second windows up to 6 hours,
    hourly roll-ups beyond, or as `resolution` says), and live performance. Windows
    without requests are absent."""
    known_pipeline(context, name)
    span, res = time_range(context, seconds, resolution)
    return context.monitor.pipeline_metrics(name, span, res)


@get("/v1/system", sync_to_thread=True, tags=["monitoring"], responses=ERRORS_QUERY)
def system(context: Context, seconds: FromQuery[float] = 3600.0,
           resolution: FromQuery[str] = "auto") -> SystemResponse:
    """Process and box resources over the last `seconds` (raw samples up to 6 hours,
    hourly roll-ups beyond: the mean of CPU and load, the worst of the rest)."""
    span, res = time_range(context, seconds, resolution)
    return context.monitor.system(span, res)


ROUTES = [prometheus, drift, pipeline_metrics, system]
