"""The pipeline screen's Models tab: every version, and, with the daemon's backtest, all
of them scored on the same newest held-out rows (like with like), beside the metric on
each one's own held-out rows; the highlighted version's gate verdict and lineage."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.widgets import Static

from appliance.api_types import ModelComparison, ModelInfo, PipelineDetail
from tui import format as fmt
from tui.widgets.filter_table import FilterTable

if TYPE_CHECKING:
    from tui.app import ApplianceApp

STAGE_STYLE = {"production": "bold green", "candidate": "cyan", "archived": "dim",
               "rejected": "yellow"}


class ModelsTab:
    """Mixed into the pipeline screen: fills ``#models-table`` and ``#model-detail``."""

    models: list[ModelInfo]
    comparison: ModelComparison | None
    _model_columns: list[str] | None
    console: ApplianceApp
    query_one: Any

    def _show_models(self, models: list[ModelInfo], d: PipelineDetail, now: datetime,
                     comparison: ModelComparison | None = None) -> None:
        """Every version; with the daemon's backtest, all scored on the same newest rows
        (like with like) beside their own held-out rows' metric."""
        self.models = models
        comp = comparison if comparison is not None and comparison.rows_from_version else None
        self.comparison = comp
        table = self.query_one("#models-table", FilterTable)
        if comp is not None:
            metric = comp.metric or "metric"
            prod_v = comp.production_version
            middle = [(Text(f"{metric}·newest", justify="right"), "same"),
                      (Text(f"vs v{prod_v}" if prod_v else "vs production", justify="right"),
                       "vs"),
                      (Text(f"{metric}·own", justify="right"), "own")]
        else:
            names: list[str] = []
            for m in models:
                names += [k for k, v in m.metrics.items() if isinstance(v, float | int)
                          and k not in names]
            middle = [(Text(n, justify="right"), n) for n in names[:3]]
        labels = [label.plain for label, _ in middle]
        if labels != self._model_columns:
            self._model_columns = labels
            table.clear(columns=True)
            table.add_column("version", key="version")
            table.add_column("stage", key="stage")
            for label, key in middle:
                table.add_column(label, key=key)
            table.add_column("trained on", key="data")
            table.add_column("trigger", key="trigger")
            table.add_column("created", key="created")
        scores = {s.version: s for s in comp.scores} if comp is not None else {}
        rows = []
        for m in models:
            sets = [s.get("version") for s in m.lineage.get("datasets", [])
                    if isinstance(s, dict)]
            data = (f"v{min(sets)}–v{max(sets)}" if len(sets) > 1 else
                    f"v{sets[0]}" if sets else fmt.NONE)
            if m.lineage.get("rows") is not None:
                data += f" · {m.lineage['rows']:,} rows"
            if comp is not None:
                metric_cells = self._compared_cells(m, scores.get(m.version), comp)
            else:
                metric_cells = [Text(fmt.num(m.metrics.get(k)) if isinstance(
                    m.metrics.get(k), float | int) else fmt.NONE, justify="right")
                    for _, k in middle]
            rows.append((str(m.version), [
                Text(f"v{m.version}", style="bold" if m.stage == "production" else ""),
                Text(m.stage + (" · shadow" if m.shadow is not None
                                and m.shadow.state == "shadowing" else ""),
                     style=STAGE_STYLE.get(m.stage, "")),
                *metric_cells, data, _origin(m),
                Text(fmt.clock(m.created_at, now), style="dim"),
            ]))
        table.set_rows(rows)
        prod = d.production.version if d.production else None
        table.title = (f"model versions ({len(models)}; production "
                        f"{f'v{prod}' if prod else 'none'})")
        table.border_subtitle = (
            f"newest: all on v{comp.rows_from_version}'s {comp.rows:,} held-out rows · own: "
            "on each one's · p: promote · r: retrain" if comp is not None else
            "p: promote / roll back · r: retrain")
        self._show_model_detail(table.highlighted_key)

    @staticmethod
    def _compared_cells(m: ModelInfo, score: Any, comp: ModelComparison) -> list[Text]:
        """A version on the same rows, its gain over production there, and its metric on
        its own held-out rows."""
        metric = comp.metric or ""
        own = m.metrics.get(metric)
        own_cell = Text(fmt.num(own) if isinstance(own, float | int) else fmt.NONE,
                        justify="right", style="dim")
        if score is None or score.value is None:
            return [Text(fmt.NONE, justify="right"), Text("not scored", style="dim",
                                                          justify="right"), own_cell]
        if m.version == comp.production_version:
            vs = Text("serving", style="dim", justify="right")
        elif score.vs_production is not None:
            se = (f" ±{score.standard_error:.3f}" if score.standard_error is not None
                  else "")
            vs = Text(f"{score.vs_production:+.3f}{se}", justify="right",
                      style="green" if score.vs_production > 0 else "yellow")
        else:
            vs = Text(fmt.NONE, justify="right")
        return [Text(fmt.num(score.value), justify="right"), vs, own_cell]

    def _model(self, key: str | None) -> ModelInfo | None:
        return next((m for m in self.models if str(m.version) == key), None)

    def _show_model_detail(self, key: str | None) -> None:
        m = self._model(key)
        panel = self.query_one("#model-detail", Static)
        if m is None:
            panel.update("No model yet: one is trained as soon as data arrives." if not
                         self.models else "")
            return
        text = Text()
        text.append(f"v{m.version} ", style="bold")
        text.append(m.stage, style=STAGE_STYLE.get(m.stage, ""))
        if m.promoted_at:
            text.append(f", promoted {fmt.clock(m.promoted_at, self.console.clock())}")
        text.append("\n")
        comp = self.comparison
        score = next((x for x in comp.scores if x.version == m.version), None) if comp else None
        if comp is not None and score is not None:
            text.append(f"newest rows (every version on v{comp.rows_from_version}'s "
                        f"{comp.rows:,} held-out rows): ", style="dim")
            if score.value is None:
                text.append(f"not scored ({score.note})\n")
            else:
                text.append(f"{comp.metric} {score.value:.4f}")
                if score.vs_production is not None:
                    se = (f" ± {score.standard_error:.4f}" if score.standard_error is not None
                          else "")
                    text.append(f", {score.vs_production:+.4f}{se} vs production "
                                f"v{comp.production_version}")
                text.append("\n")
        text.append("source: ", style="dim")
        origin = m.lineage.get("source")
        text.append((_source_text(origin) if isinstance(origin, dict) else
                     m.source + (f" (key {m.key_id})" if m.key_id else "")) + "\n")
        if m.policy_state:
            text.append("policy: ", style="dim")
            text.append(m.policy_state + "\n", style="cyan")
        if m.shadow is not None:
            self._show_shadow(text, m)
        if m.decision:
            text.append("gate: ", style="dim")
            text.append(m.decision + "\n")
        text.append("own held-out rows: ", style="dim")
        text.append("  ".join(f"{k} {v:.4f}" for k, v in m.metrics.items()
                              if isinstance(v, float | int)))
        sets = [s for s in m.lineage.get("datasets", []) if isinstance(s, dict)]
        if sets:
            text.append("\nlineage: ", style="dim")
            text.append(f"{m.lineage.get('trigger', '?')} run on data sets "
                        + ", ".join(f"v{s.get('version')} ({s.get('rows', '?')} rows)"
                                    for s in sets))
        panel.update(text)

    @staticmethod
    def _show_shadow(text: Text, m: ModelInfo) -> None:
        """The shadow's numbers beside production's, on the same live requests."""
        s = m.shadow
        assert s is not None
        text.append(f"shadow ({s.state}) beside production v{s.production_version}: ",
                     style="dim")
        text.append(f"{s.scored:,} of {s.requests:,} requests scored ({s.sampled:,} "
                    f"sampled, {s.dropped:,} dropped), {s.errors:,} errors")
        if s.agreement is not None:
            text.append(f", agreement {s.agreement:.1%}, mean score difference "
                        f"{s.mean_diff or 0:.4f}")
        text.append("\n")
        if s.p99_ms is not None or s.production_p99_ms is not None:
            text.append("  latency p50 / p99: ", style="dim")
            text.append(f"shadow {fmt.num(s.p50_ms)} / {fmt.num(s.p99_ms)} ms, production "
                        f"{fmt.num(s.production_p50_ms)} / {fmt.num(s.production_p99_ms)} ms\n")
        live = s.live
        if live.get("metric"):
            text.append("  on labelled live rows: ", style="dim")
            text.append(f"{live['metric']} shadow {fmt.num(live.get('shadow_value'))} vs "
                        f"production {fmt.num(live.get('production_value'))} on "
                        f"{s.labelled or 0:,} rows\n")


def _origin(m: ModelInfo) -> str:
    """The trigger of a version trained here; for one imported, where it came from."""
    source = m.lineage.get("source")
    if isinstance(source, dict):
        kind = "bundle" if source.get("kind") == "bundle" else "model file"
        key = source.get("key_id")
        return f"{kind} {key[:8]}" if key else kind
    return str(m.lineage.get("trigger", fmt.NONE))


def _source_text(source: dict[str, Any]) -> str:
    """An imported version's origin, in one line."""
    if source.get("kind") == "bundle":
        signed = (f"signed by key {source.get('key_id')}" if source.get("key_id")
                  else "unsigned")
        return (f"bundle from {source.get('exported_by') or '?'} ({source.get('pipeline')} "
                f"v{source.get('version')}, trained {source.get('trained_at') or '?'}), "
                f"{signed}, imported {source.get('imported_at') or '?'} via "
                f"{source.get('imported_via') or '?'}")
    return (f"a bare LightGBM model ({source.get('file') or 'uploaded'}), imported "
            f"{source.get('imported_at') or '?'} via {source.get('imported_via') or '?'}")
