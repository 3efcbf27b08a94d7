"""Serving: the HTTP API (Litestar) over the daemon's parts, with the predict fast path
and the Host check in front of it."""

from appliance.serving.app import create_app

__all__ = [
    "create_app",
]
