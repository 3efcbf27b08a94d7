"""Serving: the HTTP API (Litestar) over the daemon's parts, with the predict fast path
and the Host check in front of it.

What it needs from the daemon is :class:`ServingContext` (a Protocol the daemon's
``Services`` satisfies); serving never imports the daemon."""

from appliance.serving.app import create_app
from appliance.serving.auth import reads_need_token
from appliance.serving.context import ServingContext
from appliance.serving.fast_path import PredictFastPath
from appliance.serving.host import HostPolicy

__all__ = [
    "HostPolicy",
    "PredictFastPath",
    "ServingContext",
    "create_app",
    "reads_need_token",
]
