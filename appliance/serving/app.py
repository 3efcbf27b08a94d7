"""The HTTP API: the Litestar app over the daemon's parts, assembled.

Handlers are small and synchronous where the work is (a prediction is microseconds of
LightGBM, cheaper than a hop to a thread); everything slow is handed to the daemon's jobs.
Every error a client sees is an :class:`ErrorBody` (``errors.py``); none carries a stack
trace. The routes live in ``routes/``, one module per resource; they receive the daemon's
parts (a :class:`ServingContext`) through Litestar's dependency injection from the app's
state, predict excepted (see ``routes/predict.py``). In front of Litestar, as plain ASGI:
request metrics, the Host check (``host.py``), and the fast paths of predict and of the
other protocols' prediction routes (``fast_path.py``; the Open Inference Protocol in
``routes/oip.py``, MLflow's scoring in ``routes/mlflow.py``, both answered by predict's
machinery).
"""

from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.types import ASGIApp

from appliance.serving.auth import ReadGateMiddleware, predict_tokens, read_tokens
from appliance.serving.context import CONTEXT_KEY, ServingContext, provide_context
from appliance.serving.errors import EXCEPTION_HANDLERS
from appliance.serving.fast_path import PredictFastPath, ProtocolFastPath
from appliance.serving.host import HostCheckMiddleware, HostPolicy
from appliance.serving.openapi import openapi_config, refine_openapi
from appliance.serving.routes import (
    bundles,
    data,
    datasets,
    events,
    explanations,
    features,
    health,
    models,
    monitoring,
    pipelines,
)
from appliance.serving.routes.mlflow import MlflowRoutes, mlflow_routes
from appliance.serving.routes.monitoring import METRICS_REGISTRY_KEY, metrics_registry
from appliance.serving.routes.oip import OipRoutes, oip_routes
from appliance.serving.routes.predict import Predictions, predict_route


def create_app(context: ServingContext) -> Litestar:
    settings = context.settings
    monitor = context.monitor
    predictions = Predictions(context)
    tokens = predict_tokens(context)
    mlflow = MlflowRoutes(context, predictions)
    oip = OipRoutes(context, predictions)
    app = Litestar(
        # In this order in the OpenAPI document.
        route_handlers=[*health.ROUTES, *pipelines.ROUTES,
                        predict_route(predictions, settings.server, tokens), *models.ROUTES,
                        *data.ROUTES, *datasets.ROUTES, *events.ROUTES, *monitoring.ROUTES,
                        *features.ROUTES, bundles.bundle_route(settings),
                        *oip_routes(oip, tokens), *mlflow_routes(mlflow, tokens),
                        *explanations.ROUTES],
        # What handlers are given by dependency injection: the context, to every handler
        # with a `context` parameter, and the Prometheus registry, to /metrics.
        state=State({
            CONTEXT_KEY: context,
            METRICS_REGISTRY_KEY: metrics_registry(context),
        }),
        dependencies={"context": Provide(provide_context, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=openapi_config(),
        logging_config=None,
        debug=False,
    )
    readers = read_tokens(context)
    refine_openapi(app, reads_need_token=readers is not None)
    bundles.describe_body(app.openapi_schema)
    # Around Litestar's own layers, outermost first: request metrics (they see every
    # answer, errors of the framework included), the Host check (every request, unknown
    # paths too), the read gate (off loopback), then the fast path of predict. Plain ASGI:
    # cheaper than Litestar middleware, which runs inside routing.
    # The protocols' prediction routes have a fast path of their own, behind predict's.
    protocols: ASGIApp = ProtocolFastPath(app.asgi_handler, tokens=tokens,
                                          max_body=settings.server.max_body_bytes,
                                          oip=oip.fast_answer, mlflow=mlflow.answer,
                                          server=settings.server)
    fast: ASGIApp = PredictFastPath(protocols, tokens=tokens,
                                    max_body=settings.server.max_body_bytes,
                                    answer=predictions.fast_predict, server=settings.server)
    if readers is not None:
        fast = ReadGateMiddleware(fast, readers)
    host_checked = HostCheckMiddleware(fast, HostPolicy(settings.server.host,
                                                        settings.server.allowed_hosts))
    app.asgi_handler = monitor.instrument(host_checked, resolve=protocol_pipeline(mlflow))
    return app


def protocol_pipeline(mlflow: MlflowRoutes) -> Any:
    """For the request metrics: the pipeline of a call of the Open Inference Protocol's
    infer or MLflow's /invocations (counted as that pipeline's predict calls), else None."""
    prefix, suffix = "/v2/models/", "/infer"

    def resolve(scope: dict[str, Any]) -> str | None:
        path = scope.get("path", "")
        if scope.get("method") == "POST" and path.startswith(prefix) and path.endswith(suffix):
            name = path[len(prefix):-len(suffix)].split("/", 1)[0]
            return name or None
        return mlflow.resolve(scope)

    return resolve
