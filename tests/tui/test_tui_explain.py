"""The Traffic tab's explanation of the newest logged prediction: against the real daemon
through the pilot, and the panel's text for a multiclass answer, for none yet, and for a
daemon without the route."""

from __future__ import annotations

from datetime import UTC, datetime

from textual.widgets import DataTable

from appliance.api_types import Explanation, FeatureContribution, LatestExplanation
from tests.serving.test_explain import PREDICT, ROWS, served  # noqa: F401 - the fixture
from tests.tui.test_tui import SIZE, rows, text_of, until
from tui.app import make_app
from tui.client import NotAvailable
from tui.screens.pipeline import PipelineScreen
from tui.widgets.explanation import explanation_text

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


async def test_the_traffic_tab_explains_the_newest_logged_prediction(served):  # noqa: F811
    answer = served.post(PREDICT, json={"rows": ROWS[3:4], "explain": 5}).json()
    pid = answer["prediction_ids"][0]
    (e,) = answer["explanations"][0]
    app = make_app(served.url, served.token, refresh_seconds=0.3)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#pipelines", DataTable)
        await until(pilot, lambda: "machines" in rows(table), 10, "the pipeline row")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 10, "the screen")
        await pilot.press("4")
        panel = app.screen.query_one("#explanation")
        await until(pilot, lambda: pid in text_of(panel), 20, "the logged prediction")
        text = text_of(panel)
    assert f"why v{answer['model_version']} answered {answer['predictions'][0]:.3f}" in text
    lines = text.splitlines()
    assert f"raw score {e['raw_score']:+.3f}" in lines[0]
    # The features in the route's order, each with the value sent and its contribution.
    for line, c in zip(lines[1:-1], e["contributions"], strict=True):
        assert line.strip().startswith(f"{c['feature']} = ")
        assert line.endswith(f"{c['contribution']:+.3f}")
    assert lines[-1].strip().startswith(f"raw score = base value {e['base_value']:+.3f}")
    assert any("(from machine_info)" in line or "(derived)" in line for line in lines) or \
        all(c["source"] == "input" for c in e["contributions"])


def test_multiclass_shows_the_answered_class_and_none_yet_says_why():
    def one(label: str, value: float) -> Explanation:
        return Explanation(raw_score=value - 1.0, base_value=-1.0, others=0.0, class_=label,
                           contributions=[FeatureContribution(feature="rpm",
                                                              contribution=value, value=1500)])

    answer = LatestExplanation(
        pipeline="p", model_version=2, prediction_id="x1", ts="2026-03-02T09:59:00.000Z",
        prediction={"class": "mill", "probabilities": {"lathe": 0.2, "mill": 0.8}},
        explanations=[one("lathe", -0.5), one("mill", 0.75)])
    text = explanation_text(answer, "p", NOW).plain
    assert "answered mill (class mill's score) · raw score -0.250" in text
    assert "rpm = 1500" in text and "+0.750" in text and "-0.500" not in text
    none = LatestExplanation(pipeline="p", model_version=2, message="no prediction of v2")
    assert explanation_text(none, "p", NOW).plain == "why: no prediction of v2"
    older = explanation_text(NotAvailable(404, "not_found", "Not Found"), "p", NOW).plain
    assert "not available from this daemon yet" in older
