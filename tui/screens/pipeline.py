"""One pipeline, in tabs: Data, Models, Drift, Traffic, Jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane, Tabs

from appliance.api_types import (
    DriftResponse,
    FeatureSetInfo,
    FeatureSetList,
    IngestionInfo,
    JobInfo,
    JobsResponse,
    ModelComparison,
    ModelInfo,
    PipelineDetail,
    PipelineMetrics,
    PipelineSummary,
)
from tui import format as fmt
from tui.client import ApiError, DaemonUnavailable, NotAvailable, gather
from tui.messages import PipelineSnapshot
from tui.screens import held
from tui.screens.base import FilterBar, LiveScreen, guarded
from tui.screens.confirm import ConfirmScreen
from tui.screens.models_tab import ModelsTab
from tui.widgets.banner import ConnectionBanner
from tui.widgets.charts import TimeChart
from tui.widgets.drift_bars import DriftBars
from tui.widgets.explanation import explanation_text
from tui.widgets.filter_table import FilterTable
from tui.widgets.pipeline_table import drift_share, drift_text, status_text

if TYPE_CHECKING:
    from tui.app import ApplianceApp

T = TypeVar("T")
TABS = ["data", "models", "drift", "traffic", "jobs"]
SOURCES = {"ingestion": "a new data set", "window": "the newest data sets",
           "newest_data": "the newest data set", "predictions": "sampled requests"}
STATUS_WORD = {"rejected": "refused"}  # the API's word, and the one the console uses
STATUS_STYLE = {"accepted": "green", "rejected": "bold yellow", "duplicate": "dim",
                "succeeded": "green", "failed": "bold red", "running": "yellow",
                "cancelled": "dim"}


async def _optional(call: Awaitable[T]) -> T | NotAvailable:
    """A route a daemon may not have yet: its absence is a value, not an error."""
    try:
        return await call
    except NotAvailable as exc:
        return exc


# --- admin actions, each behind a confirmation -------------------------------------------


def confirm_retrain(app: App[Any], name: str, detail: PipelineDetail | None = None) -> None:
    console: ApplianceApp = app  # type: ignore[assignment]
    if detail is not None and detail.production is not None:
        prod = detail.production.version
        extra = (f"It trains on all {detail.datasets} data sets ({detail.rows:,} rows) and "
                 f"becomes production only if it beats v{prod} on the newest data; v{prod} "
                 "keeps serving meanwhile.")
    else:
        extra = ("It trains on every data set received so far; the first model that beats "
                 "the trivial baseline becomes production.")
    if detail is not None and detail.held:
        extra += (f" Held data sets ({', '.join(f'v{v}' for v in detail.held)}: suspect "
                  "labels) are left out until released.")

    def answered(yes: bool | None) -> None:
        if yes:
            _retrain(console, name)

    console.push_screen(ConfirmScreen(f"Retrain {name} now?", extra, yes="Retrain"), answered)


def _retrain(console: ApplianceApp, name: str) -> None:
    async def call() -> None:
        try:
            answer = await console.client.retrain(name)
        except DaemonUnavailable as exc:
            console.connection_lost(exc)
            console.notify(str(exc), title="Retrain not sent", severity="error", markup=False)
            return
        except ApiError as exc:
            console.notify(exc.message, title=f"Retrain {name} refused", severity="error",
                           markup=False,
                           timeout=10)
            return
        console.notify(f"{name}: {answer.message}", title="Retrain", markup=False)
        if isinstance(console.screen, LiveScreen):
            console.screen.poll(force=True)

    console.run_worker(call(), group="admin", name=f"retrain {name}", exit_on_error=False)


class PipelineScreen(ModelsTab, LiveScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("p", "promote", "Promote / roll back"),
        Binding("r", "retrain", "Retrain"),
        Binding("l", "release", "Release held"),
        Binding("x", "discard", "Discard held"),
        *[Binding(str(i + 1), f"tab('{tab}')", tab.title(), show=False)
          for i, tab in enumerate(TABS)],
    ]

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.detail: PipelineDetail | None = None
        self.summary: PipelineSummary | None = None
        self.models: list[ModelInfo] = []
        self.comparison: ModelComparison | None = None
        self._model_columns: list[str] | None = None  # the metric columns shown
        self.ingestions: list[IngestionInfo] = []
        self.jobs: list[JobInfo] = []

    # --- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner()
        yield Static(id="problem")
        yield Static(Text.assemble((self.pipeline, "bold"), " · loading…"), id="summary",
                     classes="live")
        with TabbedContent(initial="data", id="tabs"):
            with TabPane("1 Data", id="data"):
                yield FilterTable(title="files received", id="ingestions")
                yield Static(id="ingestion-detail", classes="detail")
                yield FilterTable(title="feature sets joined", id="feature-sets")
                yield Static(id="feature-note", classes="note")
                yield FilterTable(title="schema", id="schema")
            with TabPane("2 Models", id="models"):
                yield FilterTable(title="model versions", id="models-table")
                yield Static(id="model-detail", classes="detail")
            with TabPane("3 Drift", id="drift"):
                yield Static("loading…", id="drift-note", classes="note")
                with VerticalScroll(id="drift-body"):
                    yield DriftBars(id="drift-bars")
                yield TimeChart("drifted features and their share of the model's gain (%) "
                                "per check", id="drift-chart")
            with TabPane("4 Traffic", id="traffic"):
                yield Static("loading…", id="traffic-note", classes="note")
                yield Static(id="explanation", classes="detail")
                yield TimeChart("latency (ms)", id="latency-chart")
                yield TimeChart("throughput (requests/s) and errors (%)",
                                id="throughput-chart")
            with TabPane("5 Jobs", id="jobs"):
                yield FilterTable(title="scheduled", id="scheduled")
                yield Static(id="scheduled-note", classes="note")
                yield FilterTable(title="job history", id="history")
                yield Static(id="job-detail", classes="detail")
        yield FilterBar()
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"appliance · {self.pipeline}"
        ing = self.query_one("#ingestions", FilterTable)
        ing.FLEX_COLUMN = "file"
        for label, key in [("received", "ts"), ("status", "status"), ("rows", "rows"),
                           ("cols", "cols"), ("data set", "set"), ("code", "code"),
                           ("file", "file")]:
            ing.add_column(label, key=key)
        ing.border_subtitle = "/: filter"
        sets = self.query_one("#feature-sets", FilterTable)
        sets.FLEX_COLUMN = "file"
        for label, key in [("feature set", "name"), ("key", "key"), ("rows", "rows"),
                           ("keys online", "keys"), ("updated", "updated"),
                           ("newest event", "event"), ("last file", "file")]:
            sets.add_column(label, key=key)
        self.set_class(True, "-no-feature-sets")
        schema = self.query_one("#schema", FilterTable)
        schema.add_column("column", key="column")
        schema.add_column("type", key="type")
        schema.add_column("role", key="role")
        models = self.query_one("#models-table", FilterTable)
        models.border_subtitle = "p: promote / roll back · r: retrain"
        sched = self.query_one("#scheduled", FilterTable)
        for label, key in [("job", "name"), ("schedule", "schedule"), ("next run", "next"),
                           ("at", "at")]:
            sched.add_column(label, key=key)
        hist = self.query_one("#history", FilterTable)
        hist.FLEX_COLUMN = "error"
        for label, key in [("#", "id"), ("kind", "kind"), ("trigger", "trigger"),
                           ("status", "status"), ("started", "started"), ("took", "took"),
                           ("model", "version"), ("error", "error")]:
            hist.add_column(label, key=key)
        ing.focus()

    @property
    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active or "data"

    # --- data --------------------------------------------------------------------------

    async def load(self) -> Message:
        client = self.console.client
        name = self.pipeline
        tab = self.active_tab
        calls: dict[str, Awaitable[Any]] = {
            "detail": client.pipeline(name),
            "list": client.pipelines(),
        }
        if tab == "data":
            calls["ingestions"] = client.ingestions(name)
            calls["feature_sets"] = _optional(client.feature_sets())
        elif tab == "models":
            calls["models"] = client.models(name, compare=True)
        elif tab == "drift":
            calls["drift"] = _optional(client.drift(name))
        elif tab == "traffic":
            calls["metrics"] = _optional(client.metrics(name))
            calls["explanation"] = _optional(client.latest_explanation(name))
        elif tab == "jobs":
            calls["jobs"] = client.jobs(name)
        results = dict(zip(calls, await gather(*calls.values()), strict=True))
        summary = next((p for p in results.pop("list").pipelines if p.name == name), None)
        self.summary = summary
        return PipelineSnapshot(tabs=frozenset([tab]), **results)

    @guarded
    def on_pipeline_snapshot(self, snap: PipelineSnapshot) -> None:
        now = self.console.clock()
        self.detail = snap.detail
        self._show_summary(snap.detail, self.summary)
        self._show_schema(snap.detail)
        if snap.ingestions is not None:
            self._show_ingestions(snap.ingestions.ingestions, now)
        if snap.feature_sets is not None:
            self._show_feature_sets(snap.feature_sets, now)
        if snap.models is not None:
            self._show_models(snap.models.models, snap.detail, now, snap.models.comparison)
        if snap.drift is not None:
            self._show_drift(snap.drift, now)
        if snap.metrics is not None:
            self._show_traffic(snap.metrics, now)
        if snap.explanation is not None:
            self.query_one("#explanation", Static).update(
                explanation_text(snap.explanation, self.pipeline, now))
        if snap.jobs is not None:
            self._show_jobs(snap.jobs, now)

    def _show_summary(self, d: PipelineDetail, s: PipelineSummary | None) -> None:
        text = Text()
        text.append(d.name, style="bold")
        text.append(" · ")
        text.append_text(status_text(d.status))
        text.append(f" · {d.task or 'task not known yet'} · target {d.target}")
        if d.production is not None:
            m = d.production.metrics
            first = next(iter(m.items()), None)
            metric = f" ({first[0]} {first[1]:.3f})" if first and isinstance(first[1], float) \
                else ""
            text.append(" · production ")
            text.append(f"v{d.production.version}{metric}", style="bold")
        else:
            text.append(" · no model yet", style="dim")
        refused = d.ingestions.get("rejected", 0)
        text.append(f"\n{d.datasets} data sets ({d.rows:,} rows) · {d.models} models · "
                    f"{sum(d.ingestions.values())} files")
        if refused:
            text.append(f" ({refused} refused)", style="yellow")
        if d.held:
            text.append(f" · {len(d.held)} held (suspect labels)", style="bold yellow")
        if s is not None:
            text.append(f" · {fmt.rate(s.requests_per_s)} req/s · p99 {fmt.ms(s.p99_ms)} · ")
            if s.drift_status == "drift":
                share = drift_share(s)
                text.append("DRIFT" + (f" {share * 100:.0f}%" if share else ""),
                            style="bold red")
            else:
                text.append("drift ")
                text.append_text(drift_text(s.drift_status))
        self.query_one("#summary", Static).update(text)

    def _show_schema(self, d: PipelineDetail) -> None:
        table = self.query_one("#schema", FilterTable)
        rows = []
        for column, dtype in (d.schema or {}).items():
            role = ("target" if column == d.target else "timestamp" if column == d.timestamp
                    else "id" if column == d.id else "feature")
            rows.append((column, [column, fmt.dtype(dtype),
                                  Text(role, style="bold" if role != "feature" else "dim")]))
        table.set_rows(rows)
        table.title = f"schema ({len(rows)} columns)" if rows else "schema"
        table.border_subtitle = ("fixed by the first file accepted" if rows else
                                 "not known yet: the first file accepted fixes it")

    def _show_ingestions(self, items: list[IngestionInfo], now: datetime) -> None:
        self.ingestions = items
        table = self.query_one("#ingestions", FilterTable)
        table.set_rows([
            (str(i.id), [
                Text(fmt.clock(i.received_at, now), style="dim"),
                held.status_cell(i, STATUS_WORD.get(i.status, i.status),
                                 STATUS_STYLE.get(i.status, "")),
                Text(fmt.count(i.rows), justify="right"),
                Text(fmt.count(i.columns), justify="right"),
                f"v{i.dataset_version}" if i.dataset_version is not None else fmt.NONE,
                Text(i.code or (f"{len(i.warnings)} warnings" if i.warnings else ""),
                     style="yellow" if i.code else "dim"),
                Text(i.file_name, no_wrap=True, overflow="ellipsis"),
            ])
            for i in items
        ])
        held_count = sum(i.dataset_status == "held" for i in items)
        table.title = (f"files received ({len(items)}, "
                        f"{sum(i.status == 'rejected' for i in items)} refused"
                        + (f", {held_count} held" if held_count else "") + ")")
        self._show_ingestion_detail(table.highlighted_key)
        self.refresh_bindings()

    @on(DataTable.RowHighlighted, "#ingestions")
    def _ingestion_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_ingestion_detail(event.row_key.value)
        self.refresh_bindings()

    def _ingestion(self) -> IngestionInfo | None:
        key = self.query_one("#ingestions", FilterTable).highlighted_key
        return next((i for i in self.ingestions if str(i.id) == key), None)

    def _show_ingestion_detail(self, key: str | None) -> None:
        item = next((i for i in self.ingestions if str(i.id) == key), None)
        panel = self.query_one("#ingestion-detail", Static)
        if item is None:
            panel.update(Text("No file received yet: drop one into "
                              f"<state>/inbox/{self.pipeline}/." if not self.ingestions else ""))
            return
        text = held.detail(item)
        if text is not None:
            panel.update(text)
            return
        text = Text()
        if item.status == "rejected":
            text.append(f"✗ {item.file_name} refused", style="bold yellow")
            text.append(f" ({item.code})\n" if item.code else "\n")
            text.append(item.reason or "no reason recorded")
            text.append(f"\nThe file is in rejected/{self.pipeline}/ beside "
                        f"{item.file_name}.reason.json.", style="dim")
        else:
            text.append(f"✓ {item.file_name}", style="bold green")
            text.append(f" {item.status}: {fmt.count(item.rows)} rows × "
                        f"{fmt.count(item.columns)} columns")
            if item.dataset_version is not None:
                text.append(f" as data set v{item.dataset_version}")
            text.append(f" · {fmt.size(item.size_bytes)}")
            if item.duration_ms is not None:
                text.append(f" · read in {item.duration_ms:.0f} ms")
            for warning in item.warnings:
                text.append(f"\n⚠ {warning}", style="yellow")
        panel.update(text)

    def _show_feature_sets(self, answer: FeatureSetList | NotAvailable, now: datetime) -> None:
        """The feature sets this pipeline joins, with their freshness. Only the joined ones:
        the Data tab is about what this pipeline trains on; the others are named in a note."""
        note = self.query_one("#feature-note", Static)
        table = self.query_one("#feature-sets", FilterTable)
        if isinstance(answer, NotAvailable):
            table.set_rows([])
            self.set_class(True, "-no-feature-sets")
            self.set_class(True, "-feature-note")
            note.update(Text("Feature sets are not available from this daemon yet (no GET "
                             "/v1/feature-sets).", style="dim"))
            return
        joined = [f for f in answer.feature_sets if self.pipeline in f.used_by]
        table.set_rows([(f.name, self._feature_set_cells(f, now)) for f in joined])
        table.title = (f"feature sets joined ({len(joined)})" if len(joined) != 1 else
                       "feature set joined")
        empty = [f.name for f in joined if not f.keys]
        table.border_subtitle = Text(
            f"no values yet: drop a file into inbox/{empty[0]}/" if len(empty) == 1 else
            f"no values yet in {', '.join(empty)}: drop files into their inbox folders"
            if empty else "")
        self.set_class(not joined, "-no-feature-sets")
        others = [f.name for f in answer.feature_sets if f not in joined]
        self.set_class(not joined and bool(others), "-feature-note")
        note.update(Text(
            f"Joins no feature set ({len(others)} declared: {', '.join(others)}). Join one "
            f"with [pipelines.{self.pipeline}] join = [\"{others[0]}\"] in appliance.toml."
            if others else "", style="dim"))

    @staticmethod
    def _feature_set_cells(f: FeatureSetInfo, now: datetime) -> list[str | Text]:
        keys = (Text(f"{f.keys:,}", justify="right") if f.keys else
                Text("none yet", style="yellow", justify="right"))
        return [
            Text(f.name, style="bold"), f.key, Text(f"{f.rows:,}", justify="right"), keys,
            fmt.ago(f.updated_at, now),
            fmt.ago(f.newest_event, now) if f.timestamp else Text("no time column",
                                                                  style="dim"),
            Text(fmt.ago(f.last_ingestion, now), style="dim"),
        ]

    # --- models ------------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#models-table")
    def _model_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_model_detail(event.row_key.value)
        self.refresh_bindings()

    # --- drift -------------------------------------------------------------------------

    def _show_drift(self, drift: DriftResponse | NotAvailable, now: datetime) -> None:
        note = self.query_one("#drift-note", Static)
        bars = self.query_one(DriftBars)
        chart = self.query_one("#drift-chart", TimeChart)
        if isinstance(drift, NotAvailable):
            note.update(Text(
                "Drift is not available from this daemon yet (no GET "
                f"/v1/pipelines/{self.pipeline}/drift). This tab fills in by itself once the "
                "daemon has it.", style="dim"))
            bars.report = None
            self.set_class(True, "-no-drift")
            return
        self.set_class(drift.latest is None, "-no-drift")
        latest = drift.latest
        if latest is None:
            note.update(Text("No drift check yet. Drift is measured on the inputs of served "
                             "requests and on each new data set, against the data the "
                             "production model was trained on.", style="dim"))
            bars.report = None
            return
        summary = Text()
        source = SOURCES.get(latest.source, latest.source)
        if drift.summary is not None:  # the headline, from the daemon
            on = drift.status == "drift"
            head, _, rest = drift.summary.partition(": ")
            summary.append(head.upper() if on else head,
                           style="bold red" if on else "bold green")
            summary.append(f": {rest}" if rest else "")
            summary.append(f"\nchecked {fmt.ago(latest.computed_at, now)} on {source}",
                           style="dim")
        else:  # a daemon from before the headline
            drifted = sum(f.drifted for f in latest.features)
            summary.append("DRIFT" if latest.drifted else "no drift",
                           style="bold red" if latest.drifted else "bold green")
            summary.append(f" · {drifted} of {len(latest.features)} features over their "
                           f"threshold ({latest.drifted_share * 100:.0f}%) · checked "
                           f"{fmt.ago(latest.computed_at, now)} on {latest.rows:,} rows "
                           f"from {source}")
        if latest.model_version is not None:
            summary.append(f" vs v{latest.model_version}'s training data", style="dim")
        if latest.method == "tests":
            summary.append(" · a small sample: tests with p-values (Holm)", style="dim")
        window = drift.window
        if window is not None:
            summary.append(f"\nwindow of the newest {window.rows:,} rows (small files "
                           "together): ", style="dim")
            summary.append(window.summary or "", style="red" if window.drifted else "dim")
        note.update(summary)
        bars.report = latest
        points = [(ts.timestamp(), h.drifted_share * 100, h.importance_share)
                  for h in drift.history if (ts := fmt.parse_ts(h.computed_at)) is not None]
        points.sort(key=lambda p: p[0])
        series = [("features %", [x for x, _, _ in points], [y for _, y, _ in points])]
        weighted = [(x, w * 100) for x, _, w in points if w is not None]
        if weighted:
            series.append(("gain %", [x for x, _ in weighted], [y for _, y in weighted]))
        chart.plot(series, now.timestamp(), ymin=0.0)

    # --- traffic -----------------------------------------------------------------------

    def _show_traffic(self, metrics: PipelineMetrics | NotAvailable, now: datetime) -> None:
        note = self.query_one("#traffic-note", Static)
        if isinstance(metrics, NotAvailable):
            note.update(Text(
                "Traffic is not available from this daemon yet (no GET "
                f"/v1/pipelines/{self.pipeline}/metrics). This tab fills in by itself once "
                "the daemon has it.", style="dim"))
            self.set_class(True, "-no-traffic")
            return
        windows = sorted(metrics.windows, key=lambda w: w.start)
        if not windows:
            note.update(Text("No requests yet. Predictions: POST "
                             f"/v1/pipelines/{self.pipeline}/predict", style="dim"))
            self.set_class(True, "-no-traffic")
            return
        self.set_class(False, "-no-traffic")
        recent = [w for w in windows if w.start + w.seconds >= now.timestamp() - 60] or \
            windows[-1:]
        requests = sum(w.requests for w in recent)
        seconds = sum(w.seconds for w in recent) or 1.0
        errors = sum(w.errors_4xx + w.errors_5xx for w in recent)
        text = Text()
        text.append("last minute: ", style="dim")
        text.append(f"{requests / seconds:.1f} req/s · p50 {fmt.ms(recent[-1].p50_ms)} · "
                    f"p95 {fmt.ms(recent[-1].p95_ms)} · p99 {fmt.ms(recent[-1].p99_ms)} · "
                    f"errors {fmt.percent(errors / requests if requests else None)}")
        if metrics.live_performance:
            lp = metrics.live_performance[-1]
            text.append("\nlive ", style="dim")
            text.append(f"{lp.metric} {lp.value:.3f} on {lp.labelled:,} labelled predictions")
            if lp.validation_value is not None:
                text.append(f" (validation {lp.validation_value:.3f})", style="dim")
        note.update(text)
        xs = [w.start + w.seconds for w in windows]
        latency = [(label, [x for x, v in zip(xs, vals, strict=True) if v is not None],
                    [v for v in vals if v is not None])
                   for label, vals in (("p50", [w.p50_ms for w in windows]),
                                       ("p95", [w.p95_ms for w in windows]),
                                       ("p99", [w.p99_ms for w in windows]))]
        self.query_one("#latency-chart", TimeChart).plot(latency, now.timestamp(), ymin=0.0)
        self.query_one("#throughput-chart", TimeChart).plot(
            [("req/s", xs, [w.requests / w.seconds for w in windows]),
             ("errors %", xs, [100 * (w.errors_4xx + w.errors_5xx) / w.requests
                               if w.requests else 0.0 for w in windows])],
            now.timestamp(), ymin=0.0)

    # --- jobs --------------------------------------------------------------------------

    def _show_jobs(self, jobs: JobsResponse, now: datetime) -> None:
        sched = self.query_one("#scheduled", FilterTable)
        sched.set_rows([
            (j.id, [j.name, j.schedule, fmt.until(j.next_run, now), fmt.clock(j.next_run, now)])
            for j in jobs.scheduled
        ])
        self.set_class(not jobs.scheduled, "-no-schedule")
        self.query_one("#scheduled-note", Static).update(
            Text("Nothing scheduled: this pipeline retrains when new data arrives and when "
                 "you ask (r).", style="dim"))
        self.jobs = jobs.history
        history = self.query_one("#history", FilterTable)
        history.set_rows([
            (str(j.id), [
                str(j.id), j.kind, j.trigger,
                Text(j.status, style=STATUS_STYLE.get(j.status, "")),
                Text(fmt.clock(j.started_at, now), style="dim"),
                fmt.duration(j.started_at, j.finished_at) if j.finished_at else
                Text(fmt.ago(j.started_at, now).replace(" ago", "…"), style="yellow"),
                f"v{j.model_version}" if j.model_version is not None else fmt.NONE,
                Text(j.error or "", style="red", no_wrap=True, overflow="ellipsis"),
            ])
            for j in jobs.history
        ])
        self._show_job_detail(history.highlighted_key)

    @on(DataTable.RowHighlighted, "#history")
    def _job_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_job_detail(event.row_key.value)

    def _show_job_detail(self, key: str | None) -> None:
        job = next((j for j in self.jobs if str(j.id) == key), None)
        panel = self.query_one("#job-detail", Static)
        panel.display = bool(job and job.error)
        if job and job.error:
            panel.update(Text.assemble((f"job {job.id} failed: ", "bold red"), job.error))

    # --- tabs and actions --------------------------------------------------------------

    @on(TabbedContent.TabActivated)
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()
        self._focus_pane(event.pane)
        self.poll(force=True)

    def _focus_pane(self, pane: TabPane) -> None:
        """Focus the pane's first table (else its tab strip): focus left in a hidden pane
        would switch the tabs back to it."""
        if self.focused is not None and pane in self.focused.ancestors:
            return
        tables = [t for t in pane.query(FilterTable) if t.display]
        target = tables[0] if tables else self.query_one(TabbedContent).query_one(Tabs)
        target.focus()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        self._focus_pane(tabs.get_pane(tab))

    def action_back(self) -> None:
        self.app.pop_screen()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "promote":
            if not self.is_mounted or self.active_tab != "models":
                return False
            m = self._model(self.query_one("#models-table", FilterTable).highlighted_key)
            return None if m is None or m.stage == "production" else True
        if action in ("release", "discard"):
            if not self.is_mounted or self.active_tab != "data":
                return False
            item = self._ingestion()
            return held.can_release(item) if action == "release" else held.can_discard(item)
        return True

    def action_release(self) -> None:
        item = self._ingestion()
        if held.can_release(item):
            held.confirm_release(self, item)  # type: ignore[arg-type]

    def action_discard(self) -> None:
        item = self._ingestion()
        if held.can_discard(item):
            held.confirm_discard(self, item)  # type: ignore[arg-type]

    def action_promote(self) -> None:
        m = self._model(self.query_one("#models-table", FilterTable).highlighted_key)
        if m is None:
            return
        prod = self.detail.production if self.detail else None
        if prod is not None and prod.version == m.version:
            self.notify(f"v{m.version} is already production", severity="warning")
            return
        rollback = prod is not None and m.version < prod.version
        verb = "Roll back" if rollback else "Promote"
        question = (f"{verb} {self.pipeline} to v{m.version}?" if rollback else
                    f"Promote {self.pipeline} v{m.version} to production?")
        first = next(iter(m.metrics), None)
        compare = ""
        if first and prod is not None:
            a, b = m.metrics.get(first), prod.metrics.get(first)
            if isinstance(a, float | int) and isinstance(b, float | int):
                compare = f" ({first} {a:.4f} vs {b:.4f} for v{prod.version})"
        detail = (f"v{m.version} becomes the model every prediction uses{compare}. It is "
                  "loaded and checked first; if that fails, "
                  f"{f'v{prod.version}' if prod else 'nothing'} keeps serving.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._promote(m.version)

        self.app.push_screen(ConfirmScreen(question, detail, yes=verb), answered)

    @work(group="admin", exit_on_error=False)
    async def _promote(self, version: int) -> None:
        try:
            answer = await self.console.client.promote(self.pipeline, version)
        except DaemonUnavailable as exc:
            self.console.connection_lost(exc)
            self.notify(str(exc), title="Promotion not sent", severity="error", markup=False)
            return
        except ApiError as exc:
            self.notify(exc.message, title=f"v{version} not promoted", severity="error",
                        markup=False,
                        timeout=10)
            return
        was = f" (was v{answer.previous_version})" if answer.previous_version else ""
        self.notify(f"{self.pipeline}: v{answer.version} is production{was}",
                    title="Promoted", markup=False)
        self.poll(force=True)

    def action_retrain(self) -> None:
        confirm_retrain(self.app, self.pipeline, self.detail)

    def commands(self) -> Iterable[SystemCommand]:
        name = fmt.markup_safe(self.pipeline)  # the palette reads its titles as markup
        for i, tab in enumerate(TABS):
            yield SystemCommand(f"{name}: {tab} tab", f"Switch to the {tab} tab "
                                f"({i + 1})", self._tab_callback(tab))
        yield SystemCommand(f"Promote or roll back {name} to the highlighted version",
                            "Make it production (an older one: a rollback); asks first",
                            self._promote_from_palette)
        yield SystemCommand(f"Filter a table of {name}",
                            "Keep only the rows that contain what you type (/)",
                            self.action_filter)
        yield SystemCommand("Back to the overview", "Every pipeline, the box and the events",
                            self.action_back)

    def _tab_callback(self, tab: str) -> Callable[[], None]:
        return lambda: self.action_tab(tab)

    def _promote_from_palette(self) -> None:
        self.action_tab("models")
        self.call_after_refresh(self.action_promote)
