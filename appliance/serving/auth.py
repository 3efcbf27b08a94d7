"""Who may call what: the admin token's guard, the gate in front of predict (the
predict token when ``server.predict_token_required``, and a body declared as JSON), and
the gate in front of every read when the API listens beyond loopback (a read token).

Tokens are compared in constant time; an empty token never matches.
"""

import hmac
import re
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from appliance.api_types import ErrorBody
from appliance.core import ServerSettings
from appliance.monitoring import PREDICT_PREFIX, PREDICT_SUFFIX
from appliance.serving.asgi import header, send_error
from appliance.serving.context import ServingContext, context_of
from appliance.serving.host import HostPolicy


def _bearer(connection: ASGIConnection) -> bytes:
    raw = header(connection.scope, b"authorization") or b""
    scheme, _, token = raw.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def _token_matches(presented: bytes, *accepted: str | None) -> bool:
    """Constant-time comparison against each accepted token; an empty token never matches."""
    ok = False
    for token in accepted:
        if token:
            ok |= hmac.compare_digest(presented, token.encode())
    return ok and bool(presented)


async def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """The guard of the admin routes: ``Authorization: Bearer`` with the admin token."""
    if not _token_matches(_bearer(connection), context_of(connection).token):
        raise NotAuthorizedException(
            "this route needs the admin token: Authorization: Bearer <token from the "
            "state directory's `token` file>", headers={"WWW-Authenticate": "Bearer"},
        )


def predict_tokens(context: ServingContext) -> tuple[str, ...] | None:
    """The tokens predict accepts (its own and the admin one) when
    ``server.predict_token_required``, else None (predict is open)."""
    if not context.settings.server.predict_token_required:
        return None
    return tuple(t for t in (context.predict_token, context.token) if t)


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

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...] | None,
                 media: frozenset[str] = frozenset(),
                 reshape: Callable[[int, ErrorBody], Any] | None = None) -> None:
        """``media``: body types accepted besides JSON (the other prediction routes:
        text/csv on /invocations); ``reshape``: the refusal's body as the route's
        protocol writes errors."""
        self.app = app
        self.tokens = tokens
        self.media = media
        self.reshape = reshape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = authorization = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"authorization":
                authorization = value
        refusal = gate_refusal(self.tokens, content_type, authorization, self.media)
        if refusal is not None:
            status, body, headers = refusal
            await send_error(send, status,
                             body if self.reshape is None else self.reshape(status, body),
                             headers)
            return
        await self.app(scope, receive, send)


def gate_refusal(tokens: tuple[str, ...] | None, content_type: bytes | None,
                 authorization: bytes | None, media: frozenset[str] = frozenset(),
                 ) -> tuple[int, ErrorBody, list[tuple[bytes, bytes]]] | None:
    """Why :class:`PredictGateMiddleware` refuses a predict call (status, body, headers),
    or None when it lets it through. The fast path asks it too. ``media``: the body
    types accepted besides JSON."""
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
        got = _not_json(content_type)
        if got is not None and got not in media:
            expected = " or ".join(["application/json", *sorted(media)])
            return 415, ErrorBody(
                code="unsupported_media_type",
                message=f"the body must be {'JSON' if not media else expected}: send "
                        f"`Content-Type: {expected}` (got `{got}`)",
                details={"field": "Content-Type", "expected": expected, "got": got},
            ), []
    return None


# --- reads -----------------------------------------------------------------------------

# What stays open to anyone who reaches the API: liveness and readiness (what a load
# balancer or systemd's helpers ask), and the API's own description (no data).
OPEN_PATHS = frozenset({"/health", "/ready", "/v1/identity",  # identity: before a token
                        "/v2/health/live", "/v2/health/ready", "/ping"})  # the protocols'
OPEN_PREFIX = "/schema"


def is_prediction(method: str, path: str) -> bool:
    """A call of a prediction route (predict, the Open Inference Protocol's infer, MLflow's
    /invocations): each has its own gate (the predict token when required)."""
    return method == "POST" and (
        (path.endswith(PREDICT_SUFFIX) and path.startswith(PREDICT_PREFIX))
        or (path.endswith("/infer") and path.startswith("/v2/models/"))
        or path == "/invocations"
        or (path.endswith("/invocations") and path.startswith(PREDICT_PREFIX)))


def reads_need_token(server: ServerSettings) -> bool:
    """Reads need a token whenever the API listens beyond loopback (any address a name or a
    network reaches), or when ``server.read_token_required`` asks for it on loopback too."""
    return server.read_token_required or not HostPolicy(server.host, []).loopback


def read_tokens(context: ServingContext) -> tuple[str, ...] | None:
    """The tokens a read accepts (the read token, the predict token, the admin token) when
    reads need one, else None (reads are open)."""
    if not reads_need_token(context.settings.server):
        return None
    return tuple(t for t in (context.read_token, context.predict_token, context.token) if t)


class ReadGateMiddleware:
    """Refuses, with 401, any request without an accepted token, but for the open paths
    and predict (which has its own gate, :class:`PredictGateMiddleware`). Everything else,
    present and future routes alike, is closed by default: the event log, ingestions with
    the values they refused, models with their lineage, ``/metrics``, each entity's
    online features. Admin routes pass with the admin token and are then checked by their
    own guard (a read token gets their 401).

    Only in the app when reads need a token, so a box on loopback pays nothing for it."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if not (path in OPEN_PATHS or path.startswith(OPEN_PREFIX)
                    or is_prediction(scope["method"], path)):
                raw = header(scope, b"authorization") or b""
                scheme, _, token = raw.partition(b" ")
                presented = token.strip() if scheme.lower() == b"bearer" else b""
                if not _token_matches(presented, *self.tokens):
                    await send_error(send, 401, ErrorBody(
                        code="unauthorized",
                        message="reading this API needs a token here (it listens beyond "
                                "loopback, or server.read_token_required): Authorization: "
                                "Bearer <token from the state directory's `read_token` "
                                "file> (the `predict_token` or the admin `token` works too; "
                                "admin actions need the admin one)",
                        details={"field": "Authorization", "expected": "Bearer <read_token>"},
                    ), [(b"www-authenticate", b"Bearer")])
                    return
        await self.app(scope, receive, send)
