"""The fast paths of predict and of the protocols' prediction routes (:class:`ProtocolFastPath`).

The fast path of predict: a plain ASGI layer that answers a well-formed prediction call
with the route's own Struct (:class:`PredictRequest`) and the route's own function
(``answer_predict``, in ``routes/predict.py``), and hands every other call to Litestar with
its body replayed as it came."""

from typing import Any

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from appliance.api_types import PredictRequest
from appliance.monitoring import PREDICT_PREFIX, PREDICT_SUFFIX
from appliance.serving.auth import gate_refusal

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
        self.answer = answer  # (pipeline, rows, explain) -> PredictResponse | None (None: route)
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
                or gate_refusal(self.tokens, content_type, authorization) is not None
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
            request = _decode_predict(body)
            response = self.answer(name, request.rows, request.explain)
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


class ProtocolFastPath:
    """The fast path of the protocols' prediction routes (the Open Inference Protocol's
    ``POST /v2/models/{name}[/versions/{v}]/infer``, MLflow's ``POST /invocations`` and
    ``/v1/pipelines/{name}/invocations``), as :class:`PredictFastPath` is predict's: a
    call whose headers pass the route's gate is answered by the route's own function
    (``oip`` and ``mlflow``, each ``(path or scope, body, header) -> answer``); any call
    they raise for, and every other request, goes to Litestar with its body replayed, so
    every refusal is the route's own."""

    def __init__(self, app: ASGIApp, *, tokens: tuple[str, ...] | None, max_body: int,
                 oip: Any, mlflow: Any, server: Any) -> None:
        self.app = app
        self.tokens = tokens
        self.server = server  # ServerSettings: predict_fast_path is read per call (SIGHUP)
        self.max_body = max_body
        self.oip = oip
        self.mlflow = mlflow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            oip, media = True, _OCTETS
        elif path == "/invocations" or (path.startswith(PREDICT_PREFIX)
                                        and path.endswith("/invocations")):
            oip, media = False, _CSV
        else:
            await self.app(scope, receive, send)
            return
        content_type = authorization = length = header_length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"authorization":
                authorization = value
            elif key == b"content-length":
                length = value
            elif key == b"inference-header-content-length":
                header_length = value
        if (not self.server.predict_fast_path
                or gate_refusal(self.tokens, content_type, authorization, media) is not None
                or (length is not None and (not length.isdigit()
                                            or int(length) > self.max_body))):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive, self.max_body)
        response = None
        if body is not None:
            try:
                response = (self.oip(path, body, header_length) if oip
                            else self.mlflow(scope, body, content_type))
            except Exception:  # the route gives this call its proper answer
                response = None
        if response is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        payload = _encode(response)
        await send({"type": "http.response.start", "status": 200, "headers": [
            _JSON_HEADERS, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


_OCTETS = frozenset({"application/octet-stream"})  # tritonclient's binary tensors
_CSV = frozenset({"text/csv"})


async def _read_body(receive: Receive, max_body: int) -> tuple[list[Any], bytes | None]:
    """The request's messages and its body; None for the body when the client went away
    or it is over ``max_body`` (Litestar's cases)."""
    messages: list[Any] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > max_body:
            return messages, None
        if not message.get("more_body", False):
            break
    body = (messages[0].get("body", b"") if len(messages) == 1
            else b"".join(m.get("body", b"") for m in messages))
    return messages, body
