"""MLflow's scoring protocol: ``POST /invocations``, ``GET /ping``, ``GET /version``, as
``mlflow models serve`` answers them, so MLflow users' scripts work unchanged.

Which pipeline ``/invocations`` serves:

1. ``?pipeline=NAME`` (``/invocations?pipeline=churn``), or the per-pipeline prefix
   ``/v1/pipelines/NAME/invocations`` (a client whose base URL is
   ``http://box:8080/v1/pipelines/NAME`` posts to ``/invocations`` under it);
2. else ``server.default_pipeline``, when set;
3. else the box's only pipeline with a model (or its only pipeline at all). A box with
   several pipelines and none of the above is refused with a 400 that lists them.

A body is ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (JSON),
or ``text/csv`` with a header line (``protocols.py``); the answer is ``{"predictions":
[...]}``, the predict route's numbers, with ``model_version`` and ``prediction_ids``
beside them. It goes through the predict route's own machinery, so every refusal is the
predict route's, in MLflow's words too (``error_code``, ``message``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from litestar import MediaType, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath

from appliance import __version__
from appliance.api_types import MlflowPredictions
from appliance.core import ApplianceError
from appliance.serving.asgi import header
from appliance.serving.auth import PredictGateMiddleware
from appliance.serving.context import ServingContext
from appliance.serving.errors import mlflow_error, protocol_error_spec, protocol_exception_handlers
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.protocols import mlflow_csv_rows, mlflow_json_rows
from appliance.serving.routes.oip import answer_rows
from appliance.serving.routes.shared import known_pipeline

HANDLERS = protocol_exception_handlers(mlflow_error)
INVOCATIONS = "/invocations"
PER_PIPELINE_PREFIX, PER_PIPELINE_SUFFIX = "/v1/pipelines/", "/invocations"


def _query_pipeline(query: bytes) -> str | None:
    if not query:
        return None
    values = parse_qs(query.decode("latin-1")).get("pipeline")
    return values[-1] if values else None


class MlflowRoutes:
    """MLflow's routes over the app's predict machinery."""

    def __init__(self, context: ServingContext, predictions: Any) -> None:
        self.context = context
        self.predictions = predictions
        self.live = context.live
        self.server = context.settings.server

    def pipeline_of(self, scope: Any) -> str:
        """The pipeline a call of ``/invocations`` (or ``/ping``) is for (see the module's
        doc), or the 4xx that says how to name one."""
        path = scope.get("path", "")
        if path != INVOCATIONS and path.startswith(PER_PIPELINE_PREFIX):
            return str(path[len(PER_PIPELINE_PREFIX):-len(PER_PIPELINE_SUFFIX)])
        named = _query_pipeline(scope.get("query_string", b""))
        if named:
            return named
        default = self.server.default_pipeline  # read per call: SIGHUP may change it
        if default:
            return default
        served = list(self.live.versions())
        if len(served) == 1:
            return served[0]
        names = served or self.context.pipeline_names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise ApplianceError(
                "no_pipeline", "this box has no pipeline yet: drop a data file in "
                "inbox/<pipeline>/ and wait for its first model", {"field": "pipeline"},
                status=404)
        raise ApplianceError(
            "ambiguous_pipeline",
            f"this box serves several pipelines ({', '.join(sorted(names))}); name one: "
            "`/invocations?pipeline=NAME`, `/v1/pipelines/NAME/invocations`, or set "
            "server.default_pipeline", {"field": "pipeline", "expected": sorted(names)},
            status=400)

    def resolve(self, scope: Any) -> str | None:
        """The pipeline of a prediction call on these routes, for the request metrics;
        None for any other request, or one that names no pipeline."""
        path = scope.get("path", "")
        if scope.get("method") != "POST" or not path.endswith(PER_PIPELINE_SUFFIX) or (
                path != INVOCATIONS and not path.startswith(PER_PIPELINE_PREFIX)):
            return None
        try:
            name = self.pipeline_of(scope)
        except ApplianceError:
            return None
        return name if "/" not in name else None

    def model(self, name: str) -> Any:
        model = self.live.get(name)  # the request finishes on this model, across a swap
        if model is None:
            known_pipeline(self.context, name)
            raise ApplianceError(
                "no_model", f"pipeline `{name}` has no model in production yet; retry later",
                {"pipeline": name}, status=503)
        return model

    async def invocations(self, request: Request[Any, Any, Any]) -> MlflowPredictions:
        body = await request.body()
        return self.answer(request.scope, body, header(request.scope, b"content-type"))

    def answer(self, scope: Any, body: bytes, content_type: bytes | None) -> MlflowPredictions:
        """The answer of /invocations for a body: the route's, and the fast path's (which
        hands any call this raises for to the route). It records the call only once it
        has the answer."""
        name = self.pipeline_of(scope)
        model = self.model(name)
        media = (content_type or b"").split(b";", 1)[0].strip().lower()
        if media == b"text/csv":
            rows, explain = mlflow_csv_rows(body, model.spec), None
        else:
            rows, explain = mlflow_json_rows(body)
        answer = answer_rows(self.predictions, name, model, rows, explain)
        return MlflowPredictions(predictions=answer.predictions,
                                 model_version=answer.model_version,
                                 prediction_ids=answer.prediction_ids,
                                 explanations=answer.explanations)

    def ping(self, request: Request[Any, Any, Any]) -> Response[str]:
        """MLflow's health check: 200 once the pipeline ``/invocations`` serves has its
        model (``?pipeline=NAME`` as there), else the 4xx or 503 that says why."""
        self.model(self.pipeline_of(request.scope))
        return Response("\n", media_type=MediaType.TEXT)


_INVOCATIONS_DOC = """MLflow's scoring: `dataframe_split`, `dataframe_records`, `instances`
or `inputs` (JSON; `params` beside them), or a `text/csv` body with a header line. Answers
`{"predictions": [...]}`: the predict route's numbers (binary: the positive class's
probability; multiclass: `{"class", "probabilities"}`; regression: the value), with
`model_version` and `prediction_ids`. JSON null, NaN, or an empty CSV cell is a missing
value. Which pipeline: `?pipeline=NAME`, else server.default_pipeline, else the only one."""


def mlflow_routes(routes: MlflowRoutes, tokens: tuple[str, ...] | None
                  ) -> list[HTTPRouteHandler]:
    """MLflow's handlers of one app; ``tokens``: those /invocations accepts (None: open)."""
    r = routes
    token_required = tokens is not None
    common: dict[str, Any] = {"tags": ["mlflow"], "exception_handlers": HANDLERS}
    host = {400: protocol_error_spec("the Host header is not this appliance's")}
    errors = {
        400: protocol_error_spec(
            "the body is not a scoring request, or several pipelines and none named, or the "
            "Host header is not this appliance's"),
        404: protocol_error_spec("no such pipeline"),
        413: protocol_error_spec("the body is over server.max_body_bytes, or the batch over "
                                 "server.max_batch_rows"),
        415: protocol_error_spec("the body is neither JSON nor text/csv (Content-Type)"),
        422: protocol_error_spec("a value does not match the model's column: `details` "
                                 "names the row and the column; or there are no rows"),
        503: protocol_error_spec("the pipeline has no model yet; retry after Retry-After "
                                 "seconds"),
        **({401: protocol_error_spec("missing or wrong bearer token "
                                     "(server.predict_token_required)")}
           if token_required else {}),
    }

    async def invocations(request: Request[Any, Any, Any]) -> MlflowPredictions:
        return await r.invocations(request)

    async def pipeline_invocations(request: Request[Any, Any, Any],
                                   name: FromPath[str]) -> MlflowPredictions:
        return await r.invocations(request)

    def ping(request: Request[Any, Any, Any]) -> Response[str]:
        return r.ping(request)

    def version() -> Response[str]:
        """The server's version, as text (MLflow's server answers its own)."""
        return Response(__version__, media_type=MediaType.TEXT)

    invocations.__doc__ = pipeline_invocations.__doc__ = _INVOCATIONS_DOC
    ping.__doc__ = r.ping.__doc__
    gate = [DefineMiddleware(PredictGateMiddleware, tokens=tokens,
                             media=frozenset({"text/csv"}), reshape=mlflow_error)]
    security = SECURITY_ADMIN if token_required else None
    return [
        post(INVOCATIONS, status_code=200, responses=errors, middleware=gate,
             security=security, **common)(invocations),
        post("/v1/pipelines/{name:str}/invocations", status_code=200, responses=errors,
             middleware=gate, security=security, **common)(pipeline_invocations),
        get("/ping", sync_to_thread=True, media_type=MediaType.TEXT, responses={
            **host, **{k: errors[k] for k in (400, 404, 503)}},
            **common)(ping),
        get("/version", sync_to_thread=False, media_type=MediaType.TEXT, responses=host,
            **common)(version),
    ]
