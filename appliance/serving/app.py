"""The HTTP API: a Litestar app over the daemon's services.

Handlers are small and synchronous where the work is (a prediction is microseconds of
LightGBM, cheaper than a hop to a thread); everything slow is handed to the daemon's jobs.
Every error a client sees is an :class:`ErrorBody`; none carries a stack trace.

Every status code a route can answer is declared in its OpenAPI operation (``/schema``),
so a generated client knows them all: 400 on every route (a Host header that is not this
appliance's, see :class:`HostPolicy`), and per route what its handler can refuse.
"""

import hmac
import ipaddress
import json
import logging
import math
import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Schema,
    SecurityScheme,
)
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState
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
from appliance.core import ApplianceError
from appliance.models import primary_metric
from appliance.monitoring import PREDICT_PREFIX, PREDICT_SUFFIX
from appliance.serving.feature_routes import feature_set_routes
from appliance.store import ModelRecord

if TYPE_CHECKING:  # the daemon builds the parts; serving only uses them
    from appliance.daemon import Services

log = logging.getLogger("appliance.serve")


def _error(status: int, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description)


ERRORS_PIPELINE = {404: _error(404, "no such pipeline")}
ERRORS_ADMIN = {401: _error(401, "missing or wrong bearer token")}
# Every route: the Host check answers 400 before any handler runs.
ERRORS_HOST = {400: _error(400, "the Host header is not this appliance's address or a name "
                                "in server.allowed_hosts (DNS rebinding protection)")}
ERRORS_QUERY = {400: _error(400, "a query parameter is invalid, or the Host header is not "
                                 "this appliance's")}
BEARER = "bearer"
SECURITY_ADMIN = [{BEARER: []}]
MAX_INT64 = 2**63 - 1


class HostPolicy:
    """Which Host headers the API answers, against DNS rebinding.

    A web page on a name its author controls can make a browser on the box's network send
    requests to the appliance, if that name resolves to the appliance's address; its
    requests carry the page's name in Host. So: an IP address is accepted when it is the
    bound one (any, when bound to all interfaces; any loopback one, when bound to loopback),
    ``localhost`` when loopback is reachable, and other names only when configured in
    ``server.allowed_hosts`` (``*.example.com`` matches sub-domains). A request without a
    Host header (HTTP/1.0) is accepted: browsers always send one.
    """

    def __init__(self, bound: str, names: list[str]) -> None:
        bound = bound.strip().strip("[]").lower()
        try:
            self.bound_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
                ipaddress.ip_address(bound))
        except ValueError:
            self.bound_ip = None
        self.wildcard = self.bound_ip is not None and self.bound_ip.is_unspecified
        self.loopback = bound == "localhost" or (
            self.bound_ip is not None and self.bound_ip.is_loopback)
        wanted = [n.strip().lower().rstrip(".") for n in names if n.strip()]
        if self.bound_ip is None and bound:
            wanted.append(bound)
        self.exact = frozenset(n for n in wanted if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in wanted if n.startswith("*."))
        self._cache: dict[bytes, bool] = {}

    def allows(self, raw: bytes) -> bool:
        ok = self._cache.get(raw)
        if ok is None:
            ok = self._decide(raw)
            if len(self._cache) < 1024:
                self._cache[raw] = ok
        return ok

    def _decide(self, raw: bytes) -> bool:
        try:
            text = raw.decode("ascii").strip().lower()
        except UnicodeDecodeError:
            return False
        if text.startswith("["):
            end = text.find("]")
            host, rest = (text[1:end], text[end + 1:]) if end > 0 else ("", "")
            if rest and not (rest[0] == ":" and rest[1:].isdigit()):
                return False
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                host = text
            elif not port.isdigit():
                return False
        host = host.rstrip(".")
        if not host:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            return self.wildcard or ip == self.bound_ip or (self.loopback and ip.is_loopback)
        if host == "localhost" and (self.loopback or self.wildcard):
            return True
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _send_error(send: Send, status: int, body: ErrorBody,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = msgspec.json.encode(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class HostCheckMiddleware:
    """Refuses, with 400, a request whose Host header the :class:`HostPolicy` refuses."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is not None and not self.policy.allows(host):
                shown = host.decode("latin-1")[:100]
                await _send_error(send, 400, ErrorBody(
                    code="invalid_host",
                    message=f"Host `{shown}` is not this appliance's address; if clients "
                            "reach it by that name, add it to server.allowed_hosts",
                    details={"field": "Host", "got": shown},
                ))
                return
        await self.app(scope, receive, send)


def _bearer(connection: ASGIConnection) -> bytes:
    raw = _header(connection.scope, b"authorization") or b""
    scheme, _, token = raw.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def _token_matches(presented: bytes, *accepted: str | None) -> bool:
    """Constant-time comparison against each accepted token; an empty token never matches."""
    ok = False
    for token in accepted:
        if token:
            ok |= hmac.compare_digest(presented, token.encode())
    return ok and bool(presented)


JSON_MEDIA = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")


_json_media_cache: dict[bytes, str | None] = {}


def _not_json(raw: bytes) -> str | None:
    """The media type of a Content-Type that is not JSON, else None (cached)."""
    if raw in _json_media_cache:
        return _json_media_cache[raw]
    media = raw.decode("latin-1").split(";", 1)[0].strip().lower()
    verdict = None if JSON_MEDIA.match(media) else media
    if len(_json_media_cache) < 256:
        _json_media_cache[raw] = verdict
    return verdict


class PredictGateMiddleware:
    """What predict checks before its body is read, in one pass over the headers.

    - With ``server.predict_token_required``: ``Authorization: Bearer`` with the predict
      token or the admin token, compared in constant time (else 401).
    - The body must be declared JSON (else 415). No Content-Type is taken as JSON (simple
      clients omit it). Refusing ``text/plain`` and forms also means a web page can't post
      to the API without a CORS preflight.

    A route middleware rather than Litestar guards: a guard costs a copy of the route
    handler on every call, which is most of a fast prediction.
    """

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...] | None) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = authorization = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"authorization":
                authorization = value
        refusal = _gate_refusal(self.tokens, content_type, authorization)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        await self.app(scope, receive, send)


def _gate_refusal(tokens: tuple[str, ...] | None, content_type: bytes | None,
                  authorization: bytes | None,
                  ) -> tuple[int, ErrorBody, list[tuple[bytes, bytes]]] | None:
    """Why :class:`PredictGateMiddleware` refuses a predict call (status, body, headers),
    or None when it lets it through."""
    if tokens is not None:
        scheme, _, token = (authorization or b"").partition(b" ")
        presented = token.strip() if scheme.lower() == b"bearer" else b""
        if not _token_matches(presented, *tokens):
            return 401, ErrorBody(
                code="unauthorized",
                message="predictions need a token here (server.predict_token_required): "
                        "Authorization: Bearer <token from the state directory's "
                        "`predict_token` file>",
            ), [(b"www-authenticate", b"Bearer")]
    if content_type is not None:
        media = _not_json(content_type)
        if media is not None:
            return 415, ErrorBody(
                code="unsupported_media_type",
                message=f"the body must be JSON: send `Content-Type: application/json` "
                        f"(got `{media}`)",
                details={"field": "Content-Type", "expected": "application/json",
                         "got": media},
            ), []
    return None


_decode_predict = msgspec.json.Decoder(PredictRequest).decode
_encode = msgspec.json.Encoder().encode
_JSON_HEADERS = (b"content-type", b"application/json")


class PredictFastPath:
    """Answers a well-formed prediction call before Litestar's per-request machinery.

    On a small box that machinery (routing, the handler's signature model, the body's
    extraction, the response object) costs more than the prediction itself. So for
    ``POST /v1/pipelines/{name}/predict`` this layer reads the body, decodes it with the
    route's own Struct and calls the route's own function (``answer``); only when all of
    that succeeds does it send the answer, with the headers Litestar would send.

    Everything else goes to the Litestar app untouched, with the body replayed as it came:
    other routes, a refused header (token, Content-Type), a body over the size limit, one
    that doesn't decode, a pipeline without a model, a row the model refuses, any failure.
    So every refusal is the route's own, with the status, message and OpenAPI declaration
    it has always had; a refused call just does its checks twice. ``answer`` must have no
    side effect before it returns (it records the call only once it has the answer).
    """

    def __init__(self, app: ASGIApp, *, tokens: tuple[str, ...] | None, max_body: int,
                 answer: Any, server: Any) -> None:
        self.app = app
        self.tokens = tokens
        self.server = server  # ServerSettings: predict_fast_path is read per call (SIGHUP)
        self.max_body = max_body
        self.answer = answer  # (pipeline, rows) -> PredictResponse | None (not here: route)
        self._skip, self._cut = len(PREDICT_PREFIX), -len(PREDICT_SUFFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not path.endswith(PREDICT_SUFFIX) or not path.startswith(PREDICT_PREFIX)
                or not self.server.predict_fast_path):
            await self.app(scope, receive, send)
            return
        name = path[self._skip:self._cut]
        content_type = authorization = length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"authorization":
                authorization = value
            elif key == b"content-length":
                length = value
        if (not name or "/" in name
                or _gate_refusal(self.tokens, content_type, authorization) is not None
                or (length is not None and (not length.isdigit()
                                            or int(length) > self.max_body))):
            await self.app(scope, receive, send)
            return
        messages: list[Any] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: Litestar's case
                await self.app(scope, _replay(messages, receive), send)
                return
            size += len(message.get("body", b""))
            if size > self.max_body:
                await self.app(scope, _replay(messages, receive), send)
                return
            if not message.get("more_body", False):
                break
        body = (messages[0].get("body", b"") if len(messages) == 1
                else b"".join(m.get("body", b"") for m in messages))
        try:
            response = self.answer(name, _decode_predict(body).rows)
        except Exception:  # the route gives this call its proper answer
            response = None
        if response is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        payload = _encode(response)
        await send({"type": "http.response.start", "status": 200, "headers": [
            _JSON_HEADERS, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def _replay(messages: list[Any], receive: Receive) -> Receive:
    """A ``receive`` that gives back the messages already read, then reads on."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class _Constant(str):
    """NaN, Infinity or -Infinity, as written in a body."""


def _non_finite_number(body: bytes) -> tuple[int, str, str] | None:
    """Find NaN or Infinity (or a number too large for a double) in a predict body that
    the strict JSON parser refused; returns (row, field, what it is). Only on errors."""
    try:  # the stdlib parser takes NaN and Infinity, and reads 1e400 as inf
        doc = json.loads(body, parse_constant=_Constant)
    except (ValueError, RecursionError):
        return None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        return None
    for r, row in enumerate(rows):
        if isinstance(row, dict):
            for key, value in row.items():
                if isinstance(value, _Constant):
                    return r, str(key), f"{value}, which JSON does not allow"
                if isinstance(value, float) and not math.isfinite(value):
                    return r, str(key), "a number too large for a double"
    return None


_ROW_KEY = re.compile(r"^rows\[(\d+)\]$")
_GOT = re.compile(r"got `([^`]+)`")


def _model_info(r: ModelRecord) -> ModelInfo:
    return ModelInfo(version=r.version, stage=r.stage, task=r.task, metrics=r.metrics,
                     lineage=r.lineage, decision=r.decision, created_at=r.created_at,
                     promoted_at=r.promoted_at)


def create_app(services: "Services") -> Litestar:
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

    async def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if not _token_matches(_bearer(connection), services.token):
            raise NotAuthorizedException(
                "this route needs the admin token: Authorization: Bearer <token from the "
                "state directory's `token` file>", headers={"WWW-Authenticate": "Bearer"},
            )

    predict_token_required = settings.server.predict_token_required
    predict_tokens = (tuple(t for t in (services.predict_token, services.token) if t)
                      if predict_token_required else None)
    predict_auth_errors = (
        {401: _error(401, "missing or wrong bearer token (server.predict_token_required)")}
        if predict_token_required else {})

    max_body = settings.server.max_body_bytes
    server_settings = settings.server
    live = services.live
    predlog = services.predlog
    new_ids = services.prediction_ids.take

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

    @get("/health", sync_to_thread=False, tags=["health"], responses=ERRORS_HOST)
    def health() -> Health:
        """Liveness: 200 while the process serves."""
        return Health(status="ok", version=__version__)

    @get("/ready", sync_to_thread=False, tags=["health"],
         responses={**ERRORS_HOST,
                    503: ResponseSpec(data_container=Ready, description="not ready yet")})
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

    @get("/v1/pipelines", sync_to_thread=False, tags=["pipelines"], responses=ERRORS_HOST)
    def pipelines() -> PipelineList:
        """Every pipeline with its status and production version."""
        return PipelineList(pipelines=[services.monitor.fill_summary(summary(n))
                                       for n in services.pipeline_names()])

    @get("/v1/pipelines/{name:str}", sync_to_thread=False, tags=["pipelines"],
         responses={**ERRORS_HOST, **ERRORS_PIPELINE})
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
            prediction_log=predlog.stats(name) if predlog is not None else None,
        )

    @post("/v1/pipelines/{name:str}/predict", status_code=200, sync_to_thread=False,
          tags=["predict"],
          middleware=[DefineMiddleware(PredictGateMiddleware, tokens=predict_tokens)],
          security=SECURITY_ADMIN if predict_token_required else None, responses={
              **ERRORS_PIPELINE,
              **predict_auth_errors,
              400: _error(400, "the body is not valid JSON or not a predict request (NaN and "
                               "Infinity are not JSON), or the Host header is not this "
                               "appliance's"),
              413: _error(413, "the body is over server.max_body_bytes, or the batch over "
                               "server.max_batch_rows"),
              415: _error(415, "the body is not declared as JSON (Content-Type)"),
              422: _error(422, "a row does not match the model's features: `details` names "
                               "the row, the field and what was expected; or `rows` is empty"),
              503: _error(503, "the pipeline has no model yet; retry after Retry-After "
                               "seconds"),
          })
    def predict(name: FromPath[str], data: JSONBody[PredictRequest]) -> PredictResponse:
        """Predict one row or a batch. Features are matched by name; null means missing.

        Binary: the probability of the positive class; multiclass: `{"class",
        "probabilities"}`; regression: the value. One id per prediction, for feedback.
        """
        model = live.get(name)  # this request finishes on this model, even across a swap
        if model is None:
            known(name)
            raise ApplianceError(
                "no_model", f"pipeline `{name}` has no model in production yet; retry later",
                {"pipeline": name}, status=503,
            )
        return answer_predict(name, model, data.rows)

    def answer_predict(name: str, model: Any, rows: list[Any]) -> PredictResponse:
        """The prediction for a decoded body: the route's work, shared with the fast path.
        It records the call (request metrics, prediction log) only once it has the answer,
        so a refused call leaves no trace to double."""
        n = len(rows)
        if not n:
            raise ApplianceError("empty_batch", "`rows` is empty; send at least one row",
                                 {"field": "rows", "expected": "1 or more rows"}, status=422)
        max_rows = server_settings.max_batch_rows  # read per request: SIGHUP may change it
        if n > max_rows:
            raise ApplianceError(
                "batch_too_large", f"{n} rows in one call; at most {max_rows} "
                "(server.max_batch_rows)", {"field": "rows", "rows": n, "limit": max_rows},
                status=413,
            )
        spec = model.spec
        if spec.joins or spec.derived:  # the feature store: fill by key, then derive
            rows = services.features.prepare_rows(spec, rows,
                                                  settings.pipeline(name).missing_key,
                                                  model.derivation)
        predictions = model.predict_rows(rows)
        services.monitor.requests.count_rows(name, n)
        ids = new_ids(n)
        if predlog is not None:
            predlog.record(name, model.version, ids, predictions, rows, model.encoder.names)
        return PredictResponse(model_version=model.version, predictions=predictions,
                               prediction_ids=ids)

    def fast_predict(name: str, rows: list[Any]) -> PredictResponse | None:
        model = live.get(name)
        return None if model is None else answer_predict(name, model, rows)

    @get("/v1/pipelines/{name:str}/models", sync_to_thread=False, tags=["models"],
         responses={**ERRORS_HOST, **ERRORS_PIPELINE})
    def models(name: FromPath[str]) -> ModelList:
        """Versions with metrics, lineage and stage, newest first."""
        known(name)
        return ModelList(pipeline=name, models=[_model_info(r) for r in store.models(name)])

    @post("/v1/pipelines/{name:str}/models/{version:int}/promote", status_code=200,
          guards=[admin_guard], sync_to_thread=True, tags=["models"], security=SECURITY_ADMIN,
          responses={**ERRORS_HOST, **ERRORS_ADMIN,
                     404: _error(404, "no such pipeline, or no such version"),
                     409: _error(409, "the model failed its hash check or could not be "
                                      "loaded; it was not promoted and the serving model "
                                      "stays")})
    def promote(name: FromPath[str], version: FromPath[int]) -> PromoteResponse:
        """Admin: make a version production (rollback too).

        The version is verified (hash), loaded and warmed on a worker thread, then swapped
        in at once: requests in flight finish on the model they started with.
        """
        known(name)
        if not 0 < version <= MAX_INT64 or store.model(name, version) is None:
            raise ApplianceError(
                "unknown_model", f"pipeline `{name}` has no model version {version}",
                {"pipeline": name, "version": version}, status=404,
            )
        previous = services.trainer.production.promote(name, version, "promoted by an operator")
        return PromoteResponse(pipeline=name, version=version, previous_version=previous)

    @post("/v1/pipelines/{name:str}/retrain", status_code=202, guards=[admin_guard],
          sync_to_thread=False, tags=["models"], security=SECURITY_ADMIN,
          responses={**ERRORS_HOST, **ERRORS_PIPELINE, **ERRORS_ADMIN})
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
         responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
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
         responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
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

    @get("/v1/events", sync_to_thread=False, tags=["events"], responses=ERRORS_QUERY)
    def events(pipeline: FromQuery[str | None] = None,
               after: Annotated[int, Parameter(ge=0, le=MAX_INT64)] = 0,
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

    @get("/metrics", sync_to_thread=True, tags=["monitoring"], media_type=CONTENT_TYPE_LATEST,
         responses=ERRORS_HOST)
    def prometheus() -> Response[bytes]:
        """Prometheus text format: requests, latency, errors, served versions, drift,
        live performance, ingestion and training counts and durations, resources."""
        return Response(generate_latest(prometheus_registry), media_type=CONTENT_TYPE_LATEST)

    @get("/v1/pipelines/{name:str}/drift", sync_to_thread=True, tags=["monitoring"],
         responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
    def drift(name: FromPath[str], limit: FromQuery[int] = 100) -> DriftResponse:
        """The latest drift report (per feature and of the predictions) and the history of
        checks, oldest first."""
        known(name)
        return monitor.drift_response(name, limit=max(1, min(limit, 1000)))

    @get("/v1/pipelines/{name:str}/metrics", sync_to_thread=True, tags=["monitoring"],
         responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
    def pipeline_metrics(name: FromPath[str], seconds: FromQuery[float] = 3600.0,
                         resolution: FromQuery[str] = "auto") -> PipelineMetrics:
        """Request windows over the last `seconds` (raw 10-second windows up to 6 hours,
        hourly roll-ups beyond, or as `resolution` says), and live performance. Windows
        without requests are absent."""
        known(name)
        span, res = time_range(seconds, resolution)
        return monitor.pipeline_metrics(name, span, res)

    @get("/v1/system", sync_to_thread=True, tags=["monitoring"], responses=ERRORS_QUERY)
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
        problems = []
        details: dict[str, Any] = {}
        for e in exc.extra or []:
            if not isinstance(e, dict):
                problems.append(str(e))
                continue
            text = str(e.get("message", e))
            key = str(e.get("key") or "")
            source = getattr(e.get("source"), "value", e.get("source"))
            row = _ROW_KEY.match(key)
            got = _GOT.search(text)
            if row and "object" in text:
                r = int(row.group(1))
                text = f"row {r}: expected an object of feature values" + (
                    f", got {got.group(1)}" if got else "")
                details.setdefault("row", r)
                details.setdefault("field", "(row)")
                details.setdefault("expected", "an object of feature values")
            elif key == "data" and source == "body":
                if text == "'data'":  # Litestar's words for "no body at all"
                    text = "the body is empty or null"
                text = f"{text.rstrip('.')}; send a JSON object {{\"rows\": [{{feature: value, " \
                       "...}, ...]}"
                details.setdefault("field", "(body)")
                details.setdefault("expected", '{"rows": [...]}')
            elif key and source == "body":
                text = f"`{key}` in the body: {text}"
                details.setdefault("field", key)
            elif key:
                text = f"{source or 'request'} parameter `{key}`: {text}"
                details.setdefault("field", key)
            problems.append(text)
        message = "; ".join(problems) or exc.detail
        return Response(ErrorBody(code="invalid_request", message=message,
                                  details={**details, "problems": problems}), status_code=400)

    def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        status = exc.status_code
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(status, "http_error")
        message = exc.detail
        details: dict[str, Any] = {}
        if status == 413:
            message = (f"the body is over {max_body} bytes (server.max_body_bytes); send "
                       "fewer rows per call")
            details = {"limit": max_body}
        elif status == 400 and request.method == "POST":
            # The body could not be parsed as JSON.
            code = "invalid_json"
            body = ScopeState.from_scope(request.scope).body
            found = _non_finite_number(body) if isinstance(body, bytes) else None
            if found is not None:
                r, key, what = found
                message = (f"row {r}: field `{key}` is {what}; send a finite number, or null "
                           "for a missing value")
                details = {"row": r, "field": key, "expected": "a finite number or null"}
            else:
                message = (f"the body is not valid JSON ({exc.detail}); send "
                           '{"rows": [{feature: value, ...}]} (NaN and Infinity are not JSON;'
                           " send null for a missing value)")
        return Response(ErrorBody(code=code, message=message, details=details),
                        status_code=status, headers=exc.headers)

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
        openapi_config=OpenAPIConfig(
            title="appliance", version=__version__,
            components=Components(security_schemes={BEARER: SecurityScheme(
                type="http", scheme="bearer",
                description="the admin token from <state>/token (or, for predict with "
                            "server.predict_token_required, <state>/predict_token)",
            )}),
        ),
        logging_config=None,
        debug=False,
    )
    _refine_openapi(app)
    # Around Litestar's own layers, outermost first: request metrics (they see every
    # answer, errors of the framework included), the Host check (every request, unknown
    # paths too), then the fast path of predict. Plain ASGI: cheaper than Litestar
    # middleware, which runs inside routing.
    fast = PredictFastPath(app.asgi_handler, tokens=predict_tokens, max_body=max_body,
                           answer=fast_predict, server=server_settings)
    host_checked = HostCheckMiddleware(fast, HostPolicy(settings.server.host,
                                                        settings.server.allowed_hosts))
    app.asgi_handler = monitor.instrument(host_checked)
    return app


def _refine_openapi(app: Litestar) -> None:
    """Say in the schema what Litestar can't infer: the predict body takes no other field
    than ``rows`` (the Struct forbids unknown fields), and a 503 from predict carries
    ``Retry-After``. Call it after the last route is registered."""
    spec = app.openapi_schema
    schemas = spec.components.schemas if spec.components else None
    request_schema = (schemas or {}).get("PredictRequest")
    if isinstance(request_schema, Schema):
        request_schema.additional_properties = False
    predict = (spec.paths or {}).get("/v1/pipelines/{name}/predict")
    if predict is not None and predict.post is not None and predict.post.responses:
        unavailable = predict.post.responses.get("503")
        if isinstance(unavailable, OpenAPIResponse):
            unavailable.headers = {"Retry-After": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.INTEGER),
                description="seconds to wait before asking again", required=True,
            )}
