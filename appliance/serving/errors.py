"""What a client sees when a call fails: the OpenAPI declarations of the error answers,
and the exception handlers that turn every failure into an :class:`ErrorBody` (none carries
a stack trace).

Every status code a route can answer is declared in its OpenAPI operation (``/schema``),
so a generated client knows them all: 400 on every route (a Host header that is not this
appliance's, see :class:`~appliance.serving.host.HostPolicy`), and per route what its
handler can refuse.
"""

import json
import logging
import math
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import Empty
from litestar.utils.scope.state import ScopeState

from appliance.api_types import ErrorBody, ProtocolErrorBody
from appliance.core import ApplianceError
from appliance.serving.context import context_of

log = logging.getLogger("appliance.serve")


def error_spec(status: int, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description)


ERRORS_PIPELINE = {404: error_spec(404, "no such pipeline")}
ERRORS_ADMIN = {401: error_spec(401, "missing or wrong bearer token")}
# Every route: the Host check answers 400 before any handler runs.
ERRORS_HOST = {400: error_spec(400, "the Host header is not this appliance's address or a name "
                                    "in server.allowed_hosts (DNS rebinding protection)")}
ERRORS_QUERY = {400: error_spec(400, "a query parameter is invalid, or the Host header is not "
                                     "this appliance's")}


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


NESTED_TOO_DEEP = "arrays or objects are nested too deeply to decode"


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
    if status == 413 and request.url.path.endswith("/bundles"):
        max_mb = context_of(request).settings.bundles.max_bundle_mb
        message = (f"the file is over {max_mb} MB (bundles.max_bundle_mb); nothing was "
                   "registered")
        details = {"limit": max_mb << 20}
    elif status == 413:
        max_body = context_of(request).settings.server.max_body_bytes  # the app's limit
        message = (f"the body is over {max_body} bytes (server.max_body_bytes); send "
                   "fewer rows per call")
        details = {"limit": max_body}
    elif status == 400 and request.method == "POST":
        # The body could not be parsed as JSON.
        code = "invalid_json"
        body = ScopeState.from_scope(request.scope).body
        found = (_non_finite_number(body) if isinstance(body, bytes)
                 and exc.detail != NESTED_TOO_DEEP else None)
        if exc.detail == NESTED_TOO_DEEP:
            message = (f"the body is not usable JSON: {NESTED_TOO_DEEP}; a request body "
                       "nests a few levels at most (predict: "
                       '{"rows": [{feature: value, ...}]}, each value a number, a string, '
                       "a boolean or null)")
            details = {"field": "(body)", "expected": "JSON without deep nesting"}
        elif found is not None:
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


def on_recursion(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """A body nested too deeply to decode is the client's error, not the appliance's.

    JSON decoders recurse once per level of arrays and objects; a small body can nest tens
    of thousands of levels (20,000 in 40 KB), and msgspec then raises RecursionError, which
    Litestar does not take for a decoding failure (a 500, with a traceback in the log, on
    every such request). When the error comes from decoding the body (it has one, and
    Litestar holds no decoded JSON for it) the answer is the 400 of any body that is not
    usable JSON, on every route that reads a JSON body (predict, whose fast path hands
    such a body to the route, and retrain). Caught here rather than around the decoding:
    the requests that succeed pay nothing for it."""
    state = ScopeState.from_scope(request.scope)
    if isinstance(state.body, bytes) and state.body and state.json is Empty:
        return on_http_error(request, HTTPException(status_code=400, detail=NESTED_TOO_DEEP))
    return on_crash(request, exc)


def on_crash(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("request_failed path=%s error=%r", request.url.path, exc, exc_info=exc)
    return Response(ErrorBody(code="internal_error",
                              message="the appliance failed on this request; see its log"),
                    status_code=500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApplianceError: on_appliance_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    RecursionError: on_recursion,
    Exception: on_crash,
}


# --- the errors of the protocols' routes ----------------------------------------------------

# MLflow's error codes (its scoring server's ``error_code``), by status.
_MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST",
                 409: "INVALID_STATE", 413: "REQUEST_LIMIT_EXCEEDED", 415: "BAD_REQUEST",
                 422: "INVALID_PARAMETER_VALUE", 503: "TEMPORARILY_UNAVAILABLE"}


def oip_error(status: int, body: ErrorBody) -> ProtocolErrorBody:
    """An error as the Open Inference Protocol writes it (``{"error": message}``), with
    the appliance's own fields beside it."""
    return ProtocolErrorBody(error=body.message, code=body.code, message=body.message,
                             details=body.details)


def mlflow_error(status: int, body: ErrorBody) -> ProtocolErrorBody:
    """An error as MLflow's scoring server writes it (``error_code``, ``message``), with
    the appliance's own fields and the Open Inference Protocol's ``error`` beside it."""
    code = ("MALFORMED_REQUEST" if body.code in ("invalid_json", "invalid_csv")
            else _MLFLOW_CODES.get(status, "INTERNAL_ERROR"))
    return ProtocolErrorBody(error=body.message, error_code=code, code=body.code,
                             message=body.message, details=body.details)


def protocol_exception_handlers(reshape: Any) -> dict[Any, Any]:
    """The app's exception handlers, each answer's body reshaped by ``reshape(status,
    body)``: given to the protocols' routes, so that their refusals are the predict
    route's, in the protocol's words."""

    def wrap(handler: Any) -> Any:
        def reshaped(request: Request[Any, Any, Any], exc: Any) -> Response[Any]:
            response = handler(request, exc)
            body = response.content
            if isinstance(body, ErrorBody):
                body = reshape(response.status_code, body)
            return Response(body, status_code=response.status_code,
                            headers=dict(response.headers))
        return reshaped

    return {kind: wrap(handler) for kind, handler in EXCEPTION_HANDLERS.items()}


def protocol_error_spec(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ProtocolErrorBody, description=description)
