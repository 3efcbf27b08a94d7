"""Plain ASGI helpers of the layers that run before Litestar (the Host check, the predict
gate, the fast path): a header of the scope, and an :class:`ErrorBody` answer sent
without Litestar's response machinery."""

import msgspec
from litestar.types import Scope, Send

from appliance.api_types import ErrorBody


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def send_error(send: Send, status: int, body: ErrorBody,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = msgspec.json.encode(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
