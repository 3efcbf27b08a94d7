"""Exporting a registered version as a bundle (see :mod:`appliance.models.bundle`)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from appliance.core import ApplianceError, Settings
from appliance.models import bundle as b
from appliance.models import signing
from appliance.models.registry import Registry, library_versions
from appliance.store import Store


def export_bundle(store: Store, registry: Registry, settings: Settings, pipeline: str,
                  version: int | None, private_key: Any | None) -> tuple[bytes, int]:
    """The bundle of ``pipeline``'s ``version`` (default: production), signed with
    ``private_key`` unless None; returns its bytes and the version."""
    if version is None:
        record = store.production_model(pipeline)
        if record is None:
            raise ApplianceError(
                "unknown_model", f"pipeline `{pipeline}` has no production model; name a "
                "version (appliance models NAME lists them)", {"pipeline": pipeline},
                status=404)
        version = record.version
    record = store.model(pipeline, version)
    if record is None:
        raise ApplianceError("unknown_model",
                             f"pipeline `{pipeline}` has no model version {version}",
                             {"pipeline": pipeline, "version": version}, status=404)
    files = registry.files(pipeline, version)  # checked against their recorded hashes
    meta = json.loads(files["model.json"])
    config = {"pipeline": msgspec.to_builtins(settings.pipeline(pipeline)),
              "feature_sets": {j.get("feature_set"): msgspec.to_builtins(
                  settings.feature_sets[j["feature_set"]])
                  for j in (meta.get("spec") or {}).get("joins") or []
                  if j.get("feature_set") in settings.feature_sets}}
    content = {
        "model.txt": files["model.txt"],
        "model.json": files["model.json"],
        "config.json": _json(config),
        "lineage.json": _json(record.lineage),
        "versions.json": _json({"trained_with": meta.get("versions"),
                                "exported_with": library_versions()}),
    }
    manifest = b.exported_manifest(pipeline, version, record.task, record.lineage)
    signer = (lambda m: signing.sign(private_key, m)) if private_key is not None else None
    return b.pack(content, manifest, None, signer), version


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()
