"""A fleet that always says the same: three boxes answering the fixed daemon's answers
(tests/tui/tui_fixture.py) with their own pipelines, one box that does not answer and one
that answers without proving it holds the token, on a frozen clock."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from appliance.api_types import PipelineList, PipelineSummary
from tests.tui import tui_fixture
from tui.fleet.config import FleetBox

ENERGY = PipelineSummary(
    name="energy", status="serving", task="regression", production_version=7,
    serving_version=7, primary_metric="rmse", primary_metric_value=2.91, datasets=9,
    rows=48_000, last_ingestion=tui_fixture.iso(55), requests_per_s=12.0, p50_ms=1.4,
    p99_ms=38.5, error_rate=0.034, drift_status="ok", drift_share=0.0,
    drift_summary="no drift: 0 of 6 features past their threshold on 1,200 rows")


def answering(pipelines: list[PipelineSummary] | None = None,
              seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    """The fixed daemon, with other pipelines when given; ``seen`` collects the requests."""
    inner = tui_fixture.transport()

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if pipelines is not None and request.url.path == "/v1/pipelines":
            return httpx.Response(200, content=msgspec.json.encode(
                PipelineList(pipelines=pipelines)),
                headers={"content-type": "application/json"})
        return inner.handle_request(request)

    return httpx.MockTransport(handle)


def dead(seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    return httpx.MockTransport(handle)


BOXES = [
    FleetBox(name="line-1", url="http://line-1.test", token="t0ken", admin_token="t0ken"),
    FleetBox(name="line-2", url="http://line-2.test", token="t0ken"),
    FleetBox(name="shop-3", url="http://shop-3.test", token="t0ken"),
    FleetBox(name="shop-4", url="http://shop-4.test", token="not-this-box's"),
]


def transports(seen: dict[str, list[httpx.Request]] | None = None
               ) -> dict[str, httpx.AsyncBaseTransport]:
    seen = seen if seen is not None else {}
    for box in BOXES:
        seen.setdefault(box.name, [])
    return {
        "line-1": answering(seen=seen["line-1"]),
        "line-2": answering([ENERGY, tui_fixture.PIPELINES[2]], seen=seen["line-2"]),
        "shop-3": dead(seen["shop-3"]),
        "shop-4": answering(seen=seen["shop-4"]),
    }


def fleet_app(seen: dict[str, list[httpx.Request]] | None = None, **kw: Any) -> Any:
    from tui.fleet.app import FleetApp

    return FleetApp(BOXES, transports=transports(seen), clock=tui_fixture.clock,
                    refresh_seconds=3600, **kw)
