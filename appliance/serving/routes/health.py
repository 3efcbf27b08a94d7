"""Health: liveness (``/health``, on the event loop: it answers while the loop does) and
readiness (``/ready``: started, and every production model loaded; one query, on a worker
thread like every route that reads the store)."""

from litestar import Response, get
from litestar.openapi import ResponseSpec

from appliance import __version__
from appliance.api_types import Health, Ready
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_HOST


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


ROUTES = [health, ready]
