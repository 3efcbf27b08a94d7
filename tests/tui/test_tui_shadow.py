"""The Models tab shows a shadow's numbers beside production's, its policy state and where a
version comes from."""

from __future__ import annotations

from rich.text import Text

from appliance.api_types import ModelInfo, ShadowInfo
from tui.screens.models_tab import ModelsTab


def test_a_shadows_numbers_are_shown_beside_productions():
    shadow = ShadowInfo(state="shadowing", production_version=3, requests=1000, sampled=1000,
                        scored=340, dropped=2, errors=1, rows=340, agreement=0.972,
                        mean_diff=0.0123, p50_ms=0.05, p99_ms=0.21, production_p50_ms=0.04,
                        production_p99_ms=0.19, labelled=120,
                        live={"metric": "auc", "shadow_value": 0.91, "production_value": 0.88})
    m = ModelInfo(version=4, stage="candidate", task="binary", metrics={}, lineage={},
                  decision=None, created_at="2026-01-01T00:00:00Z", promoted_at=None,
                  source="bundle", key_id="ab12cd34",
                  policy_state="shadowing 340 of 1,000 requests, agreement 97.2%",
                  shadow=shadow)
    text = Text()
    ModelsTab._show_shadow(text, m)
    shown = text.plain
    assert "beside production v3" in shown
    assert "340 of 1,000 requests scored" in shown and "agreement 97.2%" in shown
    assert "shadow 0.050 / 0.210 ms, production 0.040 / 0.190 ms" in shown
    assert "auc shadow 0.910 vs production 0.880 on 120 rows" in shown
