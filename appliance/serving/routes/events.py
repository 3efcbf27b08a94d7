"""Events: the event log, newest first (ingested, refused, trained, promoted, errors)."""

from typing import Annotated

from litestar import get
from litestar.params import FromQuery, Parameter

from appliance.api_types import EventInfo, EventList
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_QUERY
from appliance.serving.routes.shared import MAX_INT64


@get("/v1/events", sync_to_thread=True, tags=["events"], responses=ERRORS_QUERY)
def events(context: Context, pipeline: FromQuery[str | None] = None,
           after: Annotated[int, Parameter(ge=0, le=MAX_INT64)] = 0,
           limit: FromQuery[int] = 200) -> EventList:
    """The event log, newest first: ingested, refused, trained, promoted, errors."""
    rows = context.store.events(pipeline=pipeline, after_id=after,
                                limit=max(1, min(limit, 1000)))
    return EventList(events=[
        EventInfo(id=e.id, ts=e.ts, kind=e.kind, level=e.level, pipeline=e.pipeline,
                  message=e.message, details=e.details) for e in rows
    ])


ROUTES = [events]
