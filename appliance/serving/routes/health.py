"""Health: liveness (``/health``) and readiness (``/ready``: started, and every production
model loaded)."""

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


@get("/ready", sync_to_thread=False, tags=["health"],
     responses={**ERRORS_HOST,
                503: ResponseSpec(data_container=Ready, description="not ready yet")})
def ready(context: Context) -> Response[Ready]:
    """200 once started and every pipeline with a production model has it loaded."""
    store = context.store
    waiting = []
    for p in store.pipelines():
        prod = store.production_model(p.name)
        live = context.live.get(p.name)
        if prod is not None and (live is None or live.version != prod.version):
            waiting.append(p.name)
    ok = context.started and not waiting
    body = Ready(ready=ok, models=context.live.versions(), waiting_for=waiting)
    return Response(body, status_code=200 if ok else 503)


ROUTES = [health, ready]
