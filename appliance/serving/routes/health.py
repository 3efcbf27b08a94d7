"""Health: liveness (``/health``, on the event loop: it answers while the loop does),
readiness (``/ready``: started, and every production model loaded; one query, on a worker
thread like every route that reads the store), and identity (``/v1/identity``: the proof
that this daemon holds the tokens, which clients ask for before they send one; open even
when reads need a token)."""

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from appliance import __version__
from appliance.api_types import IDENTITY_CHALLENGE, Health, Identity, Ready, identity_proof
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_HOST, ERRORS_QUERY


@get("/health", sync_to_thread=False, tags=["health"], responses=ERRORS_HOST)
def health() -> Health:
    """Liveness: 200 while the process serves."""
    return Health(status="ok", version=__version__)


@get("/ready", sync_to_thread=True, tags=["health"],
     responses={**ERRORS_HOST,
                503: ResponseSpec(data_container=Ready, description="not ready yet")})
def ready(context: Context) -> Response[Ready]:
    """200 once started and every pipeline with a production model has it loaded."""
    waiting = []
    for name, version in sorted(context.store.production_versions().items()):
        live = context.live.get(name)
        if live is None or live.version != version:
            waiting.append(name)
    ok = context.started and not waiting
    body = Ready(ready=ok, models=context.live.versions(), waiting_for=waiting)
    return Response(body, status_code=200 if ok else 503)


@get("/v1/identity", sync_to_thread=False, tags=["health"], responses=ERRORS_QUERY)
def identity(context: Context, request: Request[Any, Any, Any],
             challenge: Annotated[str, Parameter(pattern=IDENTITY_CHALLENGE,
                                                 description="32 to 128 lowercase hex "
                                                             "digits, fresh per check")],
             ) -> Identity:
    """Proves this daemon holds the admin token (and the predict and read tokens, when in use)
    without showing it: an HMAC of the client's challenge and the port the request came in
    on, under a key derived from each token. The CLI and the console check it before they
    send a token, so a program holding the port while the daemon is down gets none. Open:
    it must be answered before any token is sent."""
    server = request.scope.get("server")
    port = int(server[1]) if server and server[1] is not None else 0
    tokens = [t for t in (context.token, context.predict_token, context.read_token) if t]
    return Identity(port=port, proofs=[identity_proof(t, challenge, port) for t in tokens])


ROUTES = [health, ready, identity]
