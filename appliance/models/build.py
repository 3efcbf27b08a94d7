"""One training run of a pipeline: its data window, a LightGBM candidate, the gate, the
registry (with the lineage), then the pipeline's promotion policy
(:func:`~appliance.models.policy.apply_policy`: the gate's verdict, a shadow, or an operator).

It runs on the training job's thread (:mod:`appliance.jobs.training` decides when) and
stops between two boosting rounds when ``should_stop`` says so.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import polars as pl

from appliance.core import (
    DASK_INSTALL,
    ApplianceError,
    PipelineSettings,
    Settings,
    StateDir,
    dask_missing,
)
from appliance.features import CHECK_MAX_ROWS, encode_target, read_rows, to_matrix
from appliance.models import metrics as m
from appliance.models.data import Source, load_training_data
from appliance.models.gate import Decision, PastRows, decide
from appliance.models.holdout import holdout_sample, match_rows, read_holdout
from appliance.models.memory import rows_that_fit
from appliance.models.policy import PolicyOutcome, ShadowStarter, apply_policy
from appliance.models.predictor import LoadedModel
from appliance.models.production import Production
from appliance.models.registry import Registry, library_versions
from appliance.models.suspect import label_profile
from appliance.models.train import (
    Candidate,
    train,
    training_threads,
)
from appliance.store import Events, ModelRecord, Store, now_iso


class ModelBuilder:
    def __init__(self, state: StateDir, store: Store, registry: Registry, events: Events,
                 settings: Settings, production: Production) -> None:
        self.state = state
        self.store = store
        self.registry = registry
        self.events = events
        self.settings = settings
        self.production = production
        self.live = production.live
        # The feature store, when feature sets or derived features are configured.
        self.features: Any = None
        # The data set versions of a pipeline whose labels are being checked right now
        # (set by the daemon): a training that starts meanwhile leaves them out.
        self.unchecked: Callable[[str], set[int]] = lambda _pipeline: set()
        # Shadow scoring, for the shadow promotion policy (set by the daemon).
        self.shadows: ShadowStarter | None = None

    def train_and_gate(self, pipeline: str, trigger: str, *, tune_trials: int | None = None,
                       should_stop: Callable[[], bool] = lambda: False) -> ModelRecord:
        """Train on the pipeline's data window, put the candidate through the gate, register
        it with its lineage and the gate's verdict, and promote it when it passed."""
        started = time.monotonic()
        self._check_disk(pipeline)
        settings = self.settings.pipeline(pipeline)
        ts = self.settings.train
        # Held data sets (suspect labels, waiting for an operator) and discarded ones don't,
        # nor one whose labels are still being checked.
        unchecked = self.unchecked(pipeline)
        datasets = [d for d in self.store.training_datasets(pipeline)
                    if d.version not in unchecked]
        settings, memory = self._fit_memory(pipeline, settings, sum(d.rows for d in datasets))
        data = load_training_data(
            [Source(d.version, self.state.root / d.path, d.rows) for d in datasets], settings)
        if memory:
            data.window["memory"] = memory
        loaded_s = time.monotonic() - started
        trials = tune_trials if tune_trials is not None else (
            settings.train.tune_trials if settings.train.tune_trials is not None
            else ts.tune_trials)
        seconds = settings.train.tune_seconds or ts.tune_seconds
        serving: dict[str, Any] = {}
        if self.features is not None and (settings.join or settings.derived):
            data.frame, serving = self.features.prepare(data.frame, settings)
        # The champion's held-out rows: not trained on by the challenger (so the gate
        # scores both out of sample), and scored where the data window still holds them.
        champion = self.live.get(pipeline)
        past = self._past_rows(pipeline, champion)
        exclude = self._match_window(data.frame, past, pipeline, data.window)
        engine = self._engine(pipeline)
        try:
            candidate = train(data.frame, settings, ts, tune_trials=trials,
                              tune_seconds=seconds, should_stop=should_stop, exclude=exclude,
                              engine=engine,
                              row_ids=self._row_ids(engine, settings, datasets, data))
        finally:
            if engine is not None:
                engine.close()
        del exclude
        if serving:
            candidate.spec.joins = serving["joins"]
            candidate.spec.derived = serving["derived"]
            candidate.spec.derived_inputs = serving["derived_inputs"]
        rows = data.frame.height
        now_serving = self.live.get(pipeline)
        if now_serving is not champion:  # an operator promoted another version meanwhile
            champion = now_serving
            past = self._past_rows(pipeline, champion)
            self._match_window(data.frame, past, pipeline, data.window)
        del data.frame
        min_improvement = (settings.train.min_improvement
                           if settings.train.min_improvement is not None
                           else ts.min_improvement)
        decision = decide(candidate, champion, min_improvement,
                          champion_z=ts.champion_z, baseline_z=ts.baseline_z,
                          regression_z=ts.regression_z, past=past,
                          threads=training_threads(ts.threads))
        del past
        lineage = self._lineage(trigger, datasets, data, rows, candidate, loaded_s)
        lineage["engine"] = engine.describe() if engine is not None else {"name": "local"}
        lineage["gate"] = {**(decision.details or {}), "reason": decision.reason}
        record = self.registry.register(pipeline, candidate, lineage, extra={
            "gate": lineage["gate"], "champion_metrics": decision.champion_metrics,
            "label_check": label_profile(candidate),
        }, holdout_max_rows=ts.holdout_max_rows, timestamp=settings.timestamp)
        self.store.set_pipeline_task(pipeline, candidate.spec.task)
        tuned = (f", tuned over {candidate.tuning['trials_completed']} trials"
                 if candidate.tuning else "")
        where = f" {engine.where()}" if engine is not None else ""
        self.events.emit(
            "trained",
            f"v{record.version} trained on {rows} rows{where} in {candidate.seconds:.1f}s"
            f"{tuned}", pipeline=pipeline, version=record.version, metrics=candidate.metrics,
            engine=lineage["engine"]["name"],
        )
        apply_policy(pipeline, record.version, settings=self.settings,
                     production=self.production, registry=self.registry, events=self.events,
                     decision=decision, shadows=self.shadows)
        return self.store.model(pipeline, record.version) or record

    def _engine(self, pipeline: str) -> Any:
        """The pipeline's training engine for one run: None for this box, else a
        connection to the Dask cluster (dask is imported only here, only then)."""
        if self.settings.engine(pipeline) != "dask":
            return None
        missing = dask_missing()
        if missing:
            raise ApplianceError(
                "dask_not_installed",
                f"`{pipeline}` trains on Dask (engine = \"dask\"), but {', '.join(missing)} "
                f"is not installed: run {DASK_INSTALL}, or set engine = \"local\"",
                {"pipeline": pipeline, "missing": missing})
        from appliance.models.dask_engine import DaskEngine

        return DaskEngine(self.settings.dask)

    def _row_ids(self, engine: Any, settings: Any, datasets: list[Any], data: Any
                  ) -> np.ndarray | None:
        """With [dask] shared_storage: each training row's (data set version, row number in
        its file), for the workers to read the files themselves, when the frame is the
        files' rows as they are (else the rows are sent, and the lineage says why)."""
        if engine is None or not self.settings.dask.shared_storage:
            return None
        why = ""
        if settings.join or settings.derived:
            why = "the pipeline's joined and derived features are computed on the box"
        elif data.window.get("kind") != "all":
            why = "a data window chooses the rows on the box"
        else:
            ids = np.concatenate([np.column_stack([np.full(d.rows, d.version, np.int64),
                                                   np.arange(d.rows, dtype=np.int64)])
                                  for d in datasets])
            if len(ids) == data.frame.height:
                engine.sources = {d.version: str(self.state.root / d.path) for d in datasets}
                return ids
            why = "the data sets' row counts do not match the training frame"
        engine.not_shared = f"shared_storage is on, but {why}"
        return None

    def apply_policy(self, pipeline: str, version: int, source: str = "imported"
                     ) -> PolicyOutcome:
        """The pipeline's promotion policy for a registered version that was not trained
        here (a bundle, a model file): the gate, when the policy needs its verdict, scores
        it on this box's newest labelled data (:meth:`score_version`)."""
        return apply_policy(pipeline, version, settings=self.settings,
                            production=self.production, registry=self.registry,
                            events=self.events, shadows=self.shadows, source=source,
                            gate=lambda: self.score_version(pipeline, version))

    def score_version(self, pipeline: str, version: int) -> Decision:
        """The gate's verdict on a registered version trained elsewhere: its three tests on
        this box's newest labelled data set version (at most ``train.holdout_max_rows`` of
        its rows, a seeded sample beyond), the trivial baseline being the older data's
        prior or mean (the newest data's own when there is no older data: a stricter
        bar), and the champion's held-out rows."""
        settings = self.settings.pipeline(pipeline)
        ts = self.settings.train
        unchecked = self.unchecked(pipeline)
        datasets = [d for d in self.store.training_datasets(pipeline)
                    if d.version not in unchecked]
        if not datasets:
            raise ApplianceError(
                "no_labelled_data",
                f"v{version} of `{pipeline}` can't be scored by the gate: this box has no "
                "labelled data for it yet; drop some into the inbox, or set "
                f"[pipelines.{pipeline}.promotion] policy = \"manual\" or \"shadow\"",
                {"pipeline": pipeline, "version": version}, status=409)
        model = self.registry.load(pipeline, version)
        spec = model.spec
        newest = datasets[-1]
        frame = read_rows(self.state.root / newest.path, newest.rows,
                          max(CHECK_MAX_ROWS, 10 * ts.holdout_max_rows))
        if self.features is not None and (settings.join or settings.derived):
            frame, _ = self.features.prepare(frame, settings)
        frame = frame.filter(pl.col(spec.target).is_not_null()) if spec.target in \
            frame.columns else frame
        frame = holdout_sample(frame, ts.holdout_max_rows, seed=version)
        try:
            x = to_matrix(frame, spec)
            y = encode_target(frame.get_column(spec.target), spec)
        except (ApplianceError, pl.exceptions.PolarsError) as exc:
            raise ApplianceError(
                "not_scorable",
                f"v{version} of `{pipeline}` can't score this box's data set "
                f"v{newest.version}: {getattr(exc, 'message', exc)}",
                {"pipeline": pipeline, "version": version}, status=409) from None
        p = model.booster.predict(x, num_threads=training_threads(ts.threads))
        older = [self.state.root / d.path for d in datasets[:-1]]
        prior_y = y
        if older:
            try:
                prior_y = encode_target(pl.concat(
                    [pl.read_parquet(path, columns=[spec.target]) for path in older],
                    how="vertical_relaxed").get_column(spec.target).drop_nulls(), spec)
            except (ApplianceError, pl.exceptions.PolarsError):
                prior_y = y
        k = len(spec.classes or [])
        prior: Any = (np.bincount(prior_y.astype(np.int64), minlength=k) / len(prior_y)
                      if spec.task == "multiclass" else float(np.mean(prior_y)))
        metric = m.primary_metric(spec.task, settings.train.metric)
        candidate = Candidate(
            spec=spec, booster=model.booster, params=model.meta.get("params") or {},
            metrics=m.evaluate(spec.task, y, p), baseline={}, best_iteration=0,
            importance={}, task_reason="", train_rows=0, valid_rows=len(y),
            valid_frame=frame, seconds=0.0, y_valid=y, p_valid=p, y_train_prior=prior,
            metric=metric, split="imported")
        champion = self.live.get(pipeline)
        past = self._past_rows(pipeline, champion)
        min_improvement = (settings.train.min_improvement
                           if settings.train.min_improvement is not None
                           else ts.min_improvement)
        decision = decide(candidate, champion, min_improvement, champion_z=ts.champion_z,
                          baseline_z=ts.baseline_z, regression_z=ts.regression_z, past=past,
                          threads=training_threads(ts.threads))
        where = f"on its {len(y)} held-out rows"
        here = f"on {len(y)} rows of this box's newest data set v{newest.version}"
        decision.reason = decision.reason.replace(where, here)
        if decision.details is not None:
            decision.details["reason"] = decision.reason
        return decision

    def _fit_memory(self, pipeline: str, settings: PipelineSettings, rows: int
                    ) -> tuple[PipelineSettings, dict[str, Any] | None]:
        """The pipeline's settings with its data window cut to the newest rows the memory
        holds (:mod:`appliance.models.memory`), and the numbers, when it must be cut."""
        cap, numbers = rows_that_fit(self._schema(pipeline), rows,
                                     self.settings.train.memory_limit_mb)
        window = settings.train.window_rows
        if cap is None or (window is not None and window <= cap):
            return settings, None
        self.events.emit(
            "training_memory_capped",
            f"training on the newest {cap:,} of {rows:,} rows: all of them would take about "
            f"{numbers['estimated_mb']:,.0f} MB, over the {numbers['budget_mb']:,.0f} MB it "
            f"may use ({numbers['budget']}); set train.window_rows, free memory, or train on "
            "a bigger box", pipeline=pipeline, level="warning", rows=rows, kept_rows=cap,
            **numbers)
        capped = msgspec.structs.replace(
            settings, train=msgspec.structs.replace(settings.train, window_rows=cap))
        return capped, {**numbers, "rows": rows, "kept_rows": cap}

    def _schema(self, pipeline: str) -> dict[str, str] | None:
        record = self.store.pipeline(pipeline)
        return record.schema if record is not None else None

    def _past_rows(self, pipeline: str, champion: LoadedModel | None) -> PastRows | None:
        """The champion's kept held-out rows, or why there are none."""
        if champion is None:
            return None
        v = champion.version
        record = self.store.model(pipeline, v)
        if record is None:
            return PastRows(v, None, note="are not in the registry", status="not_kept")
        try:
            frame = read_holdout(self.state.root / record.path, champion.meta.get("holdout"),
                                 f"v{v} of `{pipeline}`")
        except ApplianceError as err:
            if err.code == "holdout_not_kept":
                return PastRows(v, None, note="were not kept (it was registered before "
                                "versions kept them)", status="not_kept")
            return PastRows(v, None, note=f"can't be used ({err.message})",
                            status="unreadable")
        return PastRows(v, frame, frame.height)

    def _match_window(self, frame: pl.DataFrame, past: PastRows | None, pipeline: str,
                      window: dict[str, Any]) -> np.ndarray | None:
        """Match the champion's held-out rows to the challenger's data (by content). With
        a data window, ``past`` keeps only the rows the window still holds (none left:
        obsolete). Returns the mask of the data's rows that are the champion's held-out
        rows, for training to leave out; None when there are none."""
        if past is None or past.frame is None:
            return None
        record = self.store.pipeline(pipeline)
        matched = match_rows(frame, past.frame, record.schema if record else None)
        if matched is None:
            return None
        in_frame, held = matched
        kind = window.get("kind", "all")
        if kind != "all":
            past.window = kind
            past.frame = past.frame.filter(pl.Series(held))
            if past.frame.height == 0:
                past.frame = None
                past.note = f"are all outside this version's data window ({kind}), obsolete"
                past.status = "obsolete"
        return in_frame if in_frame.any() else None

    def _check_disk(self, pipeline: str) -> None:
        """Refuse to train while the state directory's disk is below the free-space floor
        that also holds files in the inbox (``ingest.min_free_mb``): a model written there
        could fill the disk SQLite needs."""
        floor_mb = self.settings.ingest.min_free_mb
        try:
            free = shutil.disk_usage(self.state.root).free
        except OSError:
            return
        if free < floor_mb * 1024 * 1024:
            raise ApplianceError(
                "disk_full",
                f"training refused: the state directory's disk has {free / 1e6:.0f} MB free, "
                f"below ingest.min_free_mb = {floor_mb}; free some space (old files in "
                "archive/ or rejected/, say), then retrain or drop new data",
                {"free_bytes": free, "min_free_mb": floor_mb}, status=507,
            )

    def _lineage(self, trigger: str, datasets: list[Any], data: Any, rows: int,
                 candidate: Any, loaded_s: float) -> dict[str, Any]:
        """What a model was made from and how: enough to redo it, or to explain it."""
        used = data.rows_used
        sources = []
        for d in datasets:
            if not used.get(d.version):
                continue
            ingestion = self.store.ingestion(d.ingestion_id) if d.ingestion_id else None
            sources.append({
                "version": d.version, "ingestion_id": d.ingestion_id,
                "file_name": ingestion.file_name if ingestion else None,
                "sha256": d.sha256, "rows": d.rows, "rows_used": used[d.version],
                "path": d.path,
            })
        return {
            "trigger": trigger,
            "datasets": sources,
            "max_dataset_version": max(d.version for d in datasets),
            "rows": rows,
            "window": data.window,
            "split": candidate.split,
            "train_rows": candidate.train_rows,
            # the champion's held-out rows, left out of training for the gate's check
            "left_out_rows": candidate.excluded_rows,
            "valid_rows": candidate.valid_rows,
            "task": candidate.spec.task,
            "task_reason": candidate.task_reason,
            "params": candidate.params,
            "best_iteration": candidate.best_iteration,
            "tuning": {k: v for k, v in candidate.tuning.items() if k != "history"}
            if candidate.tuning else None,
            "versions": library_versions(),
            "trained_at": now_iso(),
            "load_seconds": round(loaded_s, 3),
            "training_seconds": candidate.seconds,
        }
