"""Every pipeline at a glance: one row each."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text

from appliance.api_types import PipelineSummary
from tui import format as fmt
from tui.widgets.filter_table import FilterTable, Row

STATUS_STYLE = {
    "serving": "green",
    "training": "yellow",
    "load_failed": "bold red",
    "waiting_for_model": "dim",
    "waiting_for_data": "dim",
}


def status_text(status: str) -> Text:
    return Text(status.replace("_", " "), style=STATUS_STYLE.get(status, ""))


def drift_text(status: str | None, share: float | None = None) -> Text:
    """The drift headline: ok or drift, and the share of the model's gain importance (or,
    without it, of the features) that drifted, when some did."""
    if status is None:
        return Text(fmt.NONE, style="dim")
    style = {"ok": "green", "drift": "bold red"}.get(status, "yellow")
    text = Text(status, style=style)
    if share:
        text.append(f" {share * 100:.0f}%", style="red" if status == "drift" else "dim")
    return text


def drift_share(p: PipelineSummary) -> float | None:
    return (p.drift_importance_share if p.drift_importance_share is not None
            else p.drift_share)


class PipelineTable(FilterTable):
    COLUMNS = [("pipeline", "name"), ("status", "status"), ("model", "model"),
               ("metric", "metric"), ("req/s", "rps"), ("p50", "p50"), ("p99", "p99"),
               ("errors", "err"), ("drift", "drift"), ("last data", "last")]

    def on_mount(self) -> None:
        for label, key in self.COLUMNS:
            justify = "right" if key in ("rps", "p50", "p99", "err") else "left"
            self.add_column(Text(label, justify=justify), key=key)

    def show(self, pipelines: list[PipelineSummary], now: datetime) -> None:
        self.set_rows([self.row(p, now) for p in pipelines])

    @staticmethod
    def row(p: PipelineSummary, now: datetime) -> Row:
        model = f"v{p.production_version}" if p.production_version is not None else fmt.NONE
        if p.serving_version is not None and p.serving_version != p.production_version:
            model += f" (serving v{p.serving_version})"
        metric = (f"{p.primary_metric} {p.primary_metric_value:.3f}"
                  if p.primary_metric and p.primary_metric_value is not None else fmt.NONE)
        err = Text(fmt.percent(p.error_rate), justify="right",
                   style="bold red" if (p.error_rate or 0) >= 0.01 else "")
        return p.name, [
            Text(p.name, style="bold"), status_text(p.status), model, metric,
            Text(fmt.rate(p.requests_per_s), justify="right"),
            Text(fmt.ms(p.p50_ms), justify="right"), Text(fmt.ms(p.p99_ms), justify="right"),
            err, drift_text(p.drift_status, drift_share(p)), fmt.ago(p.last_ingestion, now),
        ]
