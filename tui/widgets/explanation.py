"""Why the model said what it said: the newest logged prediction whose inputs were sampled,
explained (``GET /v1/pipelines/{name}/explanations/latest``), as the Traffic tab shows it.

One line per feature, the largest contributions first, each with the value the model saw,
a bar of its share and its signed contribution in raw-score units (log-odds for a
classifier); joined and derived features say so. The raw score heads it, and the base
value and the rest close the sum. A multiclass model shows the explanation of the class it answered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.text import Text

from appliance.api_types import Explanation, LatestExplanation
from tui import format as fmt
from tui.client import NotAvailable

BAR = 12  # cells of the longest bar
NAME = 44  # cells of "feature = value (source)"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 20 else text[:19] + "…"


def _answered(prediction: Any) -> str:
    if isinstance(prediction, dict):
        return str(prediction.get("class"))
    if isinstance(prediction, float):
        return f"{prediction:.3f}"
    return fmt.NONE if prediction is None else str(prediction)


def _chosen(answer: LatestExplanation) -> Explanation | None:
    """The explanation to show: the one, or for multiclass the answered class's."""
    if not answer.explanations:
        return None
    if isinstance(answer.prediction, dict):
        wanted = str(answer.prediction.get("class"))
        return next((e for e in answer.explanations if e.class_ == wanted),
                    answer.explanations[0])
    return answer.explanations[0]


def explanation_text(answer: LatestExplanation | NotAvailable, pipeline: str,
                     now: datetime) -> Text:
    if isinstance(answer, NotAvailable):
        return Text("Explanations are not available from this daemon yet (no GET "
                    f"/v1/pipelines/{pipeline}/explanations/latest).", style="dim")
    chosen = _chosen(answer)
    if chosen is None:
        return fmt.plain(f"why: {answer.message or 'no prediction to explain yet'}", "dim")
    text = Text()
    text.append("why ", style="bold")
    text.append(f"v{answer.model_version} answered ")
    text.append(_answered(answer.prediction), style="bold")
    if chosen.class_ is not None:
        text.append(f" (class {chosen.class_}'s score)", style="dim")
    text.append(f" · raw score {chosen.raw_score:+.3f}")
    text.append(f" · {fmt.clock(answer.ts, now)} · {answer.prediction_id}", style="dim")
    widest = max((abs(c.contribution) for c in chosen.contributions), default=0.0) or 1.0
    for c in chosen.contributions:
        label = f"{c.feature} = {_value(c.value)}"
        if c.source == "joined":
            label += f" (from {c.feature_set})"
        elif c.source == "derived":
            label += " (derived)"
        if len(label) > NAME:
            label = label[:NAME - 1] + "…"
        cells = max(1, round(BAR * abs(c.contribution) / widest))
        style = "yellow" if c.contribution > 0 else "cyan"
        text.append(f"\n  {label:<{NAME}} ")
        text.append(f"{'█' * cells:<{BAR}}", style=style)
        text.append(f" {c.contribution:+.3f}", style=style)
    text.append(f"\n  raw score = base value {chosen.base_value:+.3f} + the above"
                + (f" + the others {chosen.others:+.3f}" if chosen.others else "")
                + " (raw-score units)", style="dim")
    return text
