"""The Models tab names where an imported version came from: a bundle and its key id, or
a bare model file; a version trained here shows its trigger as before."""

from __future__ import annotations

from appliance.api_types import ModelInfo
from tui.screens.models_tab import _origin, _source_text


def _model(lineage: dict) -> ModelInfo:
    return ModelInfo(version=2, stage="production", task="binary", metrics={},
                     lineage=lineage, decision=None, created_at="2026-01-01T00:00:00Z",
                     promoted_at=None)


def test_origin_of_each_kind_of_version():
    bundle = {"kind": "bundle", "key_id": "0123456789abcdef", "exported_by": "lab-1",
              "pipeline": "machines", "version": 3, "trained_at": "2026-01-01T00:00:00Z",
              "imported_at": "2026-01-02T00:00:00Z", "imported_via": "api"}
    assert _origin(_model({"source": bundle})) == "bundle 01234567"
    assert "signed by key 0123456789abcdef" in _source_text(bundle)
    assert "from lab-1 (machines v3" in _source_text(bundle)
    bare = {"kind": "model_file", "file": "m.txt", "imported_via": "api"}
    assert _origin(_model({"source": bare})) == "model file"
    assert "bare LightGBM model (m.txt)" in _source_text(bare)
    assert _origin(_model({"trigger": "new_data"})) == "new_data"
