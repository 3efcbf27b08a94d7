"""Which version of a pipeline serves: promotion and automatic rollback.

Both load the version first (its hash checked), so a model that can't be loaded never
becomes production; then the stage in SQLite and the served model change together, under
one lock, so two promotions can't leave them disagreeing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from appliance.core import ApplianceError
from appliance.models.predictor import LiveModels
from appliance.models.registry import Registry
from appliance.store import Events, Store

log = logging.getLogger("appliance.models")


class Production:
    def __init__(self, store: Store, registry: Registry, events: Events,
                 live: LiveModels) -> None:
        self.store = store
        self.registry = registry
        self.events = events
        self.live = live
        self._lock = threading.Lock()
        # Called as listener(pipeline, version, previous) after every promotion (the gate's,
        # a shadow's, an operator's, an import's), never after a rollback: the rollout watch
        # and the shadow scoring listen. What a listener raises is logged, never passed on.
        self.on_promoted: list[Callable[[str, int, int | None], None]] = []

    def promote(self, pipeline: str, version: int, reason: str,
                gate: dict[str, Any] | None = None) -> int | None:
        """Load (verifying its hash), then make ``version`` production and serve it.
        ``gate``: the gate's verdict with its numbers, for the ``promoted`` event.

        A model that fails to load is never promoted: the serving one stays, and a
        ``model_load_failed`` event says why."""
        try:
            loaded = self.registry.load(pipeline, version)
        except ApplianceError as err:
            if err.code != "unknown_model":
                self.events.emit("model_load_failed", err.message, pipeline=pipeline,
                                 level="error", version=version, code=err.code)
            raise
        with self._lock:
            self.registry.promote(pipeline, version, reason)
            old = self.live.swap(loaded)
        extra = {"gate": gate} if gate is not None else {}
        previous = old.version if old else None
        self.events.emit("promoted", f"v{version} is production: {reason}", pipeline=pipeline,
                         version=version, previous=previous, **extra)
        for listener in list(self.on_promoted):
            try:
                listener(pipeline, version, previous)
            except Exception:
                log.exception("promotion_listener_failed pipeline=%s", pipeline)
        return previous

    def roll_back(self, pipeline: str, failed: int, to: int, cause: str, why: str,
                  **numbers: Any) -> bool:
        """A promoted version did significantly worse than ``to``, the version before it
        (the rollout watch says ``why``): serve ``to`` again and reject ``failed``. Nothing
        happens when ``failed`` no longer serves (an operator promoted another meanwhile)
        or ``to`` can't be loaded (a ``model_load_failed`` event then says why). Returns
        whether it rolled back."""
        try:
            loaded = self.registry.load(pipeline, to)
        except ApplianceError as err:
            self.events.emit("model_load_failed", f"rollback to v{to} impossible: {err.message}",
                             pipeline=pipeline, level="error", version=to, code=err.code)
            return False
        reason = f"automatic rollback: v{failed} {why}"
        with self._lock:
            serving = self.live.get(pipeline)
            if serving is None or serving.version != failed:
                return False
            self.registry.promote(pipeline, to, reason)
            self.registry.reject(pipeline, failed, f"rolled back ({cause}): {why}")
            self.live.swap(loaded)
        self.events.emit("rolled_back", f"v{to} is production again: {reason}",
                         pipeline=pipeline, level="warning", version=to, failed=failed,
                         cause=cause, **numbers)
        return True

    def fall_back(self, pipeline: str, failed: int, why: str) -> int | None:
        """The production version can't be loaded (at start): serve the newest version
        that was production before it and still loads, and record why. Returns it."""
        earlier = sorted(
            (m for m in self.store.models(pipeline)
             if m.version != failed and m.promoted_at is not None),
            key=lambda m: m.promoted_at or "", reverse=True,
        )
        for record in earlier:
            try:
                loaded = self.registry.load(pipeline, record.version)
            except ApplianceError as err:
                self.events.emit("model_load_failed", err.message, pipeline=pipeline,
                                 level="error", version=record.version, code=err.code)
                continue
            reason = f"automatic rollback: v{failed} could not be loaded ({why})"
            with self._lock:
                self.registry.promote(pipeline, record.version, reason)
                self.registry.reject(pipeline, failed, f"could not be loaded: {why}")
                self.live.swap(loaded)
            self.events.emit("rolled_back", f"v{record.version} is production again: {reason}",
                             pipeline=pipeline, level="warning", version=record.version,
                             failed=failed)
            return record.version
        return None
