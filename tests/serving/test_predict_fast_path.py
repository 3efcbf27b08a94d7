"""The fast path of predict, as an ASGI layer: it answers only a call the route would answer
with 200, and hands every other call to the route with the body exactly as it came.

The real daemon's answers through both paths are compared in test_serve.py; here the
layer's own logic (which calls it takes, the replay of the body) is driven directly."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from appliance.api_types import PredictResponse
from appliance.core import ApplianceError
from appliance.serving import PredictFastPath

PATH = "/v1/pipelines/machines/predict"
BODY = json.dumps({"rows": [{"rpm": 1500, "site": "north"}]}).encode()


class Recorder:
    """The app behind the layer (Litestar in the daemon): records what reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        self.calls.append((scope, received))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"route"})


ASKED: list[int | None] = []  # the `explain` of each call answered


def answer(name: str, rows: list[Any], explain: int | None = None) -> PredictResponse | None:
    ASKED.append(explain)
    if name == "nomodel":
        return None
    if rows and rows[0].get("rpm") == "fast":
        raise ApplianceError("invalid_row", "row 0: field `rpm`", status=422)
    if name == "broken":
        raise RuntimeError("a bug")
    return PredictResponse(model_version=3, predictions=[0.25] * len(rows),
                           prediction_ids=[f"id{i}" for i in range(len(rows))])


def run(layer: PredictFastPath, *, path: str = PATH, method: str = "POST",
        headers: list[tuple[bytes, bytes]] | None = None,
        chunks: list[bytes] | None = None, disconnect: bool = False,
        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drive one call; returns (messages the client sent, messages the layer answered)."""
    chunks = [BODY] if chunks is None else chunks
    sent: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)]
    if disconnect:
        sent[-1]["more_body"] = True
        sent.append({"type": "http.disconnect"})
    inbox = list(sent)
    answered: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        answered.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"host", b"127.0.0.1"), *(headers or [])]}
    asyncio.run(layer(scope, receive, send))
    return sent, answered


def make(*, tokens: tuple[str, ...] | None = None, enabled: bool = True,
         max_body: int = 4096) -> tuple[PredictFastPath, Recorder]:
    route = Recorder()
    layer = PredictFastPath(route, tokens=tokens, max_body=max_body, answer=answer,
                            server=SimpleNamespace(predict_fast_path=enabled))
    return layer, route


def test_a_well_formed_call_is_answered_without_the_route():
    layer, route = make()
    _, answered = run(layer, headers=[(b"content-type", b"application/json")],
                      chunks=[BODY[:7], BODY[7:20], BODY[20:]])
    assert route.calls == []
    start, body = answered
    assert start["status"] == 200
    assert dict(start["headers"]) == {b"content-type": b"application/json",
                                      b"content-length": str(len(body["body"])).encode()}
    assert msgspec.json.decode(body["body"]) == {
        "model_version": 3, "predictions": [0.25], "prediction_ids": ["id0"]}
    assert body["more_body"] is False


CALLS_FOR_THE_ROUTE = [
    # (case, keyword arguments of run(), layer settings)
    ("another method", {"method": "PUT"}, {}),
    ("another route", {"path": "/v1/pipelines/machines/models"}, {}),
    ("a name with a slash", {"path": "/v1/pipelines/a/b/predict"}, {}),
    ("an empty name", {"path": "/v1/pipelines//predict"}, {}),
    ("not JSON by its Content-Type", {"headers": [(b"content-type", b"text/plain")]}, {}),
    ("no token where one is needed", {}, {"tokens": ("s3cret",)}),
    ("a wrong token", {"headers": [(b"authorization", b"Bearer nope")]},
     {"tokens": ("s3cret",)}),
    ("a declared length over the limit", {"headers": [(b"content-length", b"99999")]}, {}),
    ("a length that is not a number", {"headers": [(b"content-length", b"12x")]}, {}),
    ("a streamed body over the limit", {"chunks": [BODY, b" " * 5000, b"]"]}, {}),
    ("a body that is not JSON", {"chunks": [b'{"rows": [']}, {}),
    ("an empty body", {"chunks": [b""]}, {}),
    ("a body that is not a predict request", {"chunks": [b'{"rows": 5}']}, {}),
    ("an unknown field", {"chunks": [b'{"rows": [], "x": 1}']}, {}),
    ("a pipeline without a model", {"path": "/v1/pipelines/nomodel/predict"}, {}),
    ("a row the model refuses", {"chunks": [b'{"rows": [{"rpm": "fast"}]}']}, {}),
    ("a failure of the route's function", {"path": "/v1/pipelines/broken/predict"}, {}),
    ("a client that goes away", {"chunks": [BODY[:5]], "disconnect": True}, {}),
    ("the fast path turned off", {}, {"enabled": False}),
]


@pytest.mark.parametrize(("call", "settings"), [c[1:] for c in CALLS_FOR_THE_ROUTE],
                         ids=[c[0] for c in CALLS_FOR_THE_ROUTE])
def test_every_other_call_goes_to_the_route_with_its_body_replayed(call, settings):
    layer, route = make(**settings)
    sent, answered = run(layer, **call)
    assert [m.get("status") for m in answered] == [299, None]  # the route's answer only
    assert len(route.calls) == 1
    _, received = route.calls[0]
    # What the route read is what the client sent, message by message (up to where the
    # route stops reading); so its own size check, parser and errors see the real body.
    assert received == sent[:len(received)]
    assert b"".join(m.get("body", b"") for m in received) == \
        b"".join(m.get("body", b"") for m in sent[:len(received)])


def test_the_right_token_and_json_media_types_take_the_fast_path():
    layer, route = make(tokens=("other", "s3cret"))
    for content_type in (b"application/json", b"application/json; charset=utf-8",
                         b"application/vnd.api+json"):
        _, answered = run(layer, headers=[(b"authorization", b"Bearer s3cret"),
                                          (b"content-type", content_type)])
        assert answered[0]["status"] == 200
    assert route.calls == []


def test_lifespan_and_other_scopes_pass_through():
    layer, _ = make()
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    layer.app = app
    asyncio.run(layer({"type": "lifespan"}, None, None))
    asyncio.run(layer({"type": "websocket", "path": PATH, "headers": []}, None, None))
    assert seen == ["lifespan", "websocket"]


def test_explain_reaches_the_answer_and_an_invalid_one_goes_to_the_route():
    layer, route = make()
    ASKED.clear()
    body = json.dumps({"rows": [{"rpm": 1500}], "explain": 3}).encode()
    _, answered = run(layer, chunks=[body])
    assert route.calls == [] and answered[0]["status"] == 200 and ASKED == [3]
    run(layer)  # without it: None
    assert ASKED == [3, None]
    _, answered = run(layer, chunks=[json.dumps({"rows": [{}], "explain": 0}).encode()])
    assert len(route.calls) == 1 and ASKED == [3, None]  # refused by the Struct: the route's
