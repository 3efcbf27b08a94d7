"""Settings: defaults < ``appliance.toml`` < environment < command-line flags.

Every setting is declared once here, with its default and its help text (the ``doc`` of
each field); the README's config reference is checked against these Structs by a test.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from appliance.core.errors import ApplianceError

Task = Literal["binary", "multiclass", "regression"]
LogLevel = Literal["debug", "info", "warning", "error"]

DEFAULT_STATE_DIR = "./appliance-state"
CONFIG_FILE_NAME = "appliance.toml"


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: Annotated[str, _doc("address the HTTP API binds to; loopback unless told otherwise")] = (
        "127.0.0.1"
    )
    port: Annotated[int, _doc("TCP port of the HTTP API"), msgspec.Meta(ge=0, le=65535)] = 8080
    max_batch_rows: Annotated[int, _doc("most rows in one predict call"), msgspec.Meta(ge=1)] = (
        1000
    )
    max_body_bytes: Annotated[
        int, _doc("largest request body accepted, in bytes"), msgspec.Meta(ge=1024)
    ] = 1_048_576
    allowed_hosts: Annotated[
        list[str],
        _doc("host names clients may use in the Host header besides the bound address "
             "(DNS rebinding protection); `*.example.com` matches sub-domains"),
    ] = []
    predict_token_required: Annotated[
        bool, _doc("predict calls need `Authorization: Bearer` with <state>/predict_token "
                   "(or the admin token)"),
    ] = False
    allow_open_predict: Annotated[
        bool, _doc("allow a non-loopback host without predict_token_required (logged)"),
    ] = False
    log_sample_rate: Annotated[
        float, _doc("share of predictions whose inputs are kept in the prediction log"),
        msgspec.Meta(ge=0, le=1),
    ] = 0.1
    log_queue_max: Annotated[
        int, _doc("predictions waiting to be logged before new ones are dropped (counted)"),
        msgspec.Meta(ge=1),
    ] = 100_000
    log_flush_seconds: Annotated[
        float, _doc("the prediction log is written at least this often"), msgspec.Meta(gt=0),
    ] = 0.1
    predict_fast_path: Annotated[
        bool, _doc("well-formed predict calls are answered ahead of the web framework's "
                   "per-request work (same answers, about twice the throughput); refusals "
                   "always take the framework's route. Off only to rule it out"),
    ] = True


class IngestSettings(_Section):
    settle_seconds: Annotated[
        float, _doc("a file is taken once its size and mtime are unchanged this long"),
        msgspec.Meta(ge=0),
    ] = 2.0
    rescan_seconds: Annotated[
        float, _doc("full rescan of the inbox, to catch what file events missed; a file sent "
                    "back for want of disk space, file descriptors or memory waits this long"),
        msgspec.Meta(gt=0),
    ] = 30.0
    max_file_mb: Annotated[
        int, _doc("files larger than this are refused (a .csv.gz: once decompressed)"),
        msgspec.Meta(ge=1),
    ] = 4096
    max_columns: Annotated[
        int, _doc("files with more columns than this are refused"), msgspec.Meta(ge=1)
    ] = 2000
    max_rows: Annotated[
        int, _doc("files with more rows than this are refused (Parquet: from its metadata)"),
        msgspec.Meta(ge=1),
    ] = 100_000_000
    max_uncompressed_mb: Annotated[
        int, _doc("a Parquet file whose data would decode to more than this is refused from "
                  "its metadata, before it is loaded"),
        msgspec.Meta(ge=1),
    ] = 8192
    min_free_mb: Annotated[
        int, _doc("files wait in the inbox while the state dir's disk has less free space "
                  "than this plus the room the file needs; the rest is kept for SQLite"),
        msgspec.Meta(ge=0),
    ] = 512


class TrainSettings(_Section):
    threads: Annotated[
        int, _doc("LightGBM threads for training; 0 means all cores but one"), msgspec.Meta(ge=0)
    ] = 0
    num_boost_round: Annotated[int, _doc("most boosting rounds"), msgspec.Meta(ge=1)] = 1000
    early_stopping_rounds: Annotated[
        int, _doc("stop when the validation metric has not improved this many rounds"),
        msgspec.Meta(ge=1),
    ] = 50
    learning_rate: Annotated[float, _doc("LightGBM learning rate"), msgspec.Meta(gt=0)] = 0.05
    num_leaves: Annotated[int, _doc("LightGBM num_leaves"), msgspec.Meta(ge=2)] = 31
    min_data_in_leaf: Annotated[int, _doc("LightGBM min_data_in_leaf"), msgspec.Meta(ge=1)] = 20
    validation_fraction: Annotated[
        float, _doc("share of rows held out for validation (the newest when timestamped)"),
        msgspec.Meta(gt=0, lt=1),
    ] = 0.2
    seed: Annotated[int, _doc("seed of the split and of LightGBM")] = 42
    min_improvement: Annotated[
        float, _doc("a challenger must beat the champion's primary metric by this much"),
        msgspec.Meta(ge=0),
    ] = 0.0
    baseline_z: Annotated[
        float, _doc("the first model must beat the trivial baseline (class prior, mean) by "
                    "this many standard errors on the validation rows, so a model that "
                    "learned nothing is not served"),
        msgspec.Meta(ge=0),
    ] = 2.0
    champion_z: Annotated[
        float, _doc("a challenger must also beat the champion by this many standard errors "
                    "of the paired difference on the validation rows; 0: min_improvement "
                    "alone decides"),
        msgspec.Meta(ge=0),
    ] = 0.0
    tune_trials: Annotated[
        int, _doc("hyperparameter search trials (Optuna) per training; 0: no search, the "
                  "parameters above are used"),
        msgspec.Meta(ge=0, le=10_000),
    ] = 0
    tune_seconds: Annotated[
        float, _doc("time budget of one hyperparameter search; a trial still running at "
                    "the limit is stopped"),
        msgspec.Meta(gt=0),
    ] = 600.0


class JobsSettings(_Section):
    retry_attempts: Annotated[
        int, _doc("a failed training job is retried this many times, with backoff"),
        msgspec.Meta(ge=0),
    ] = 3
    retry_backoff_seconds: Annotated[
        float, _doc("wait before the first retry; doubled at each further one"),
        msgspec.Meta(gt=0),
    ] = 30.0


class LogSettings(_Section):
    level: Annotated[LogLevel, _doc("log level on stderr")] = "info"


class MonitorSettings(_Section):
    window_seconds: Annotated[
        float, _doc("request metrics are counted in windows of this many seconds"),
        msgspec.Meta(ge=1, le=3600),
    ] = 10.0
    resource_interval_seconds: Annotated[
        float, _doc("process and box resources are sampled this often (psutil)"),
        msgspec.Meta(ge=0.5),
    ] = 5.0
    raw_retention_hours: Annotated[
        float, _doc("raw request windows and resource samples are kept this long"),
        msgspec.Meta(gt=0),
    ] = 48.0
    rollup_retention_days: Annotated[
        float, _doc("hourly roll-ups, drift history and live performance are kept this long"),
        msgspec.Meta(gt=0),
    ] = 90.0
    predictions_max_age_days: Annotated[
        float, _doc("logged predictions (and their feedback) older than this are removed"),
        msgspec.Meta(gt=0),
    ] = 30.0
    predictions_max_rows: Annotated[
        int, _doc("most logged predictions kept per pipeline; the oldest go first"),
        msgspec.Meta(ge=1000),
    ] = 1_000_000
    min_free_disk_mb: Annotated[
        int, _doc("a disk_pressure event when the state directory's disk has less free"),
        msgspec.Meta(ge=0),
    ] = 1024
    min_available_memory_mb: Annotated[
        int, _doc("a memory_pressure event when the box has less memory available"),
        msgspec.Meta(ge=0),
    ] = 256
    performance_interval_seconds: Annotated[
        float, _doc("live performance (feedback joined to predictions) is computed this often"),
        msgspec.Meta(ge=1),
    ] = 300.0
    performance_window_seconds: Annotated[
        float, _doc("live performance is computed per window of predictions this long"),
        msgspec.Meta(ge=60),
    ] = 3600.0
    performance_min_labelled: Annotated[
        int, _doc("a window needs this many predictions with feedback to be scored"),
        msgspec.Meta(ge=1),
    ] = 30
    performance_tolerance: Annotated[
        float, _doc("performance_degraded when the live metric is worse than the validation "
                    "metric by more than this share of it"),
        msgspec.Meta(ge=0),
    ] = 0.1


class DriftSettings(_Section):
    interval_seconds: Annotated[
        float, _doc("sampled prediction inputs are checked for drift this often"),
        msgspec.Meta(ge=1),
    ] = 300.0
    window_seconds: Annotated[
        float, _doc("the check compares the sampled inputs of this recent window"),
        msgspec.Meta(ge=1),
    ] = 3600.0
    min_rows: Annotated[
        int, _doc("fewer sampled inputs (or rows in a new data set) than this are not checked"),
        msgspec.Meta(ge=10),
    ] = 500
    psi_threshold: Annotated[
        float, _doc("a feature drifts when its PSI is above this (0.2: a significant shift)"),
        msgspec.Meta(gt=0),
    ] = 0.2
    ks_threshold: Annotated[
        float, _doc("a numeric feature drifts when its Kolmogorov-Smirnov statistic is above "
                    "this"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.2
    js_threshold: Annotated[
        float, _doc("a categorical feature drifts when its Jensen-Shannon distance is above "
                    "this"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.1
    share: Annotated[
        float, _doc("the data set drifts when at least this share of its features drift"),
        msgspec.Meta(gt=0, le=1),
    ] = 0.5


class RetrainSettings(_Section):
    min_new_rows: Annotated[
        int, _doc("retrain once this many new rows arrived (a first model trains on any data)"),
        msgspec.Meta(ge=1),
    ] = 1
    on_drift: Annotated[bool, _doc("retrain when drift is detected")] = False
    cron: Annotated[str | None, _doc("retrain on this crontab schedule")] = None


GateMetric = Literal["auc", "log_loss", "accuracy", "f1", "brier", "macro_f1", "rmse", "mae",
                     "r2"]


class PipelineTrainSettings(_Section):
    window_rows: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("train on the newest N rows only (by timestamp when there is one, else by "
             "arrival); unset: every row"),
    ] = None
    window_days: Annotated[
        Annotated[float, msgspec.Meta(gt=0)] | None,
        _doc("train on the rows within N days of the newest timestamp; needs `timestamp`; "
             "unset: every row"),
    ] = None
    metric: Annotated[
        GateMetric | None, _doc("the gate's primary metric; unset: auc (binary), log_loss "
                                "(multiclass), rmse (regression)"),
    ] = None
    min_improvement: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        _doc("overrides train.min_improvement for this pipeline"),
    ] = None
    tune_trials: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None,
        _doc("overrides train.tune_trials for this pipeline"),
    ] = None
    tune_seconds: Annotated[
        Annotated[float, msgspec.Meta(gt=0)] | None,
        _doc("overrides train.tune_seconds for this pipeline"),
    ] = None


class PipelineSettings(_Section):
    target: Annotated[str, _doc("the column to predict")] = "target"
    task: Annotated[Task | None, _doc("binary, multiclass or regression; inferred if unset")] = (
        None
    )
    timestamp: Annotated[
        str | None, _doc("event time column: chronological validation, never a feature")
    ] = None
    id: Annotated[str | None, _doc("row id column: never a feature")] = None
    retrain: RetrainSettings = msgspec.field(default_factory=RetrainSettings)
    train: PipelineTrainSettings = msgspec.field(default_factory=PipelineTrainSettings)
    derived: Annotated[
        dict[str, str],
        _doc("derived features: name = Polars SQL expression over the row's columns"),
    ] = msgspec.field(default_factory=dict)
    join: Annotated[
        list[str], _doc("feature sets joined to each row by their key (as of the row's time)")
    ] = msgspec.field(default_factory=list)
    missing_key: Annotated[
        Literal["null", "error"],
        _doc("a request's entity key with no stored features: its features are missing "
             "(null) or the request is refused (error)"),
    ] = "null"


class FeatureSetSettings(_Section):
    key: Annotated[str, _doc("the entity id column the feature set is keyed by")] = ""
    timestamp: Annotated[
        str | None, _doc("time the values became true: point-in-time joins use it")
    ] = None


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)
    jobs: JobsSettings = msgspec.field(default_factory=JobsSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    monitor: MonitorSettings = msgspec.field(default_factory=MonitorSettings)
    drift: DriftSettings = msgspec.field(default_factory=DriftSettings)
    pipelines: dict[str, PipelineSettings] = msgspec.field(default_factory=dict)
    feature_sets: dict[str, FeatureSetSettings] = msgspec.field(default_factory=dict)

    def pipeline(self, name: str) -> PipelineSettings:
        """The settings of a pipeline; one without config gets every default."""
        return self.pipelines.get(name) or PipelineSettings()


class ConfigError(Exception):
    """The config can't be used. ``key`` is the dotted path of the offending setting."""

    def __init__(self, message: str, key: str | None = None, path: Path | None = None) -> None:
        self.key = key
        self.path = path
        where = f"{path}: " if path else ""
        at = f" (at `{key}`)" if key else ""
        super().__init__(f"{where}{message}{at}")


PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def resolve_state_dir(flag: str | os.PathLike[str] | None) -> Path:
    """``--state-dir``, else ``$APPLIANCE_STATE_DIR``, else ``./appliance-state``."""
    chosen = flag or os.environ.get("APPLIANCE_STATE_DIR") or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().absolute()


def load(
    state_dir: Path,
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the settings.

    ``config_path`` (``--config``) must exist when given; otherwise ``<state>/appliance.toml``
    is read when present. ``overrides`` maps dotted keys (``server.port``) to flag values,
    which win over the file.
    """
    if config_path is not None:
        path: Path | None = Path(config_path)
        if not path.is_file():
            raise ConfigError("config file not found", path=path)
    else:
        path = state_dir / CONFIG_FILE_NAME
        if not path.is_file():
            path = None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", path=path) from None
        except OSError as exc:
            raise ConfigError(f"cannot read the config file: {exc.strerror}", path=path) from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path | None = None) -> Settings:
    """Validate a decoded TOML document; errors name the key, never a traceback."""
    pipelines_raw = raw.get("pipelines", {})
    if not isinstance(pipelines_raw, dict):
        raise ConfigError("expected a table of pipelines", key="pipelines", path=path)
    pipelines: dict[str, PipelineSettings] = {}
    for name, section in pipelines_raw.items():
        if not PIPELINE_NAME.match(name):
            raise ConfigError(
                "a pipeline name is letters, digits, '_', '.' and '-', at most 64 characters",
                key=f"pipelines.{name}", path=path,
            )
        try:
            pipelines[name] = msgspec.convert(section, PipelineSettings)
        except msgspec.ValidationError as exc:
            message, key = _split_validation_error(exc)
            full = f"pipelines.{name}" + (f".{key}" if key else "")
            raise ConfigError(message, key=full, path=path) from None
        cron = pipelines[name].retrain.cron
        if cron is not None:
            try:
                cron_trigger(cron)
            except ValueError as exc:
                raise ConfigError(
                    f"not a crontab schedule ({exc}); five fields, e.g. \"0 3 * * *\" for "
                    "03:00 every day (a sixth, leading field gives seconds)",
                    key=f"pipelines.{name}.retrain.cron", path=path,
                ) from None
        _check_pipeline_train(name, pipelines[name], path)
    feature_sets = _parse_feature_sets(raw.get("feature_sets", {}), pipelines, path)
    rest = {k: v for k, v in raw.items() if k not in ("pipelines", "feature_sets")}
    try:
        settings = msgspec.convert(rest, Settings)
    except msgspec.ValidationError as exc:
        message, key = _split_validation_error(exc)
        raise ConfigError(message, key=key, path=path) from None
    settings.pipelines = pipelines
    settings.feature_sets = feature_sets
    return settings


def _parse_feature_sets(raw: Any, pipelines: dict[str, PipelineSettings],
                        path: Path | None) -> dict[str, FeatureSetSettings]:
    """Feature sets, and the pipelines' derived features and joins that refer to them."""
    if not isinstance(raw, dict):
        raise ConfigError("expected a table of feature sets", key="feature_sets", path=path)
    out: dict[str, FeatureSetSettings] = {}
    for name, section in raw.items():
        where = f"feature_sets.{name}"
        if not PIPELINE_NAME.match(name):
            raise ConfigError("a feature set name is letters, digits, '_', '.' and '-'",
                              key=where, path=path)
        if name in pipelines:
            raise ConfigError("a name is either a pipeline or a feature set, not both",
                              key=where, path=path)
        try:
            fs = msgspec.convert(section, FeatureSetSettings)
        except msgspec.ValidationError as exc:
            message, key = _split_validation_error(exc)
            raise ConfigError(message, key=f"{where}.{key}" if key else where,
                              path=path) from None
        if not fs.key:
            raise ConfigError('a feature set needs its entity key column: key = "..."',
                              key=f"{where}.key", path=path)
        out[name] = fs
    for name, p in pipelines.items():
        for fs_name in p.join:
            if fs_name not in out:
                raise ConfigError(
                    f"joins feature set `{fs_name}`, which is not declared; add "
                    f"[feature_sets.{fs_name}] with its key",
                    key=f"pipelines.{name}.join", path=path,
                )
        for feature, text in p.derived.items():
            from appliance.core.sqlexpr import compile_expression  # Polars: only if used

            try:
                compile_expression(feature, text)
            except ApplianceError as err:
                raise ConfigError(err.message, key=f"pipelines.{name}.derived.{feature}",
                                  path=path) from None
    return out


def cron_trigger(expr: str) -> Any:
    """An APScheduler trigger from a crontab line: five fields, or six with seconds first."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr)
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=dow)
    raise ValueError(f"{len(fields)} fields")


# Which gate metrics each task has.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "log_loss", "accuracy", "f1", "brier"),
    "multiclass": ("log_loss", "accuracy", "macro_f1"),
    "regression": ("rmse", "mae", "r2"),
}


def _check_pipeline_train(name: str, p: PipelineSettings, path: Path | None) -> None:
    """Checks across keys of one pipeline, which msgspec can't express."""
    if p.train.window_days is not None and not p.timestamp:
        raise ConfigError(
            f"a window in days needs a timestamp column; set [pipelines.{name}] timestamp "
            '= "..." or use window_rows', key=f"pipelines.{name}.train.window_days", path=path,
        )
    if p.task and p.train.metric and p.train.metric not in TASK_METRICS[p.task]:
        raise ConfigError(
            f"`{p.train.metric}` is not a {p.task} metric; use one of "
            f"{', '.join(TASK_METRICS[p.task])}", key=f"pipelines.{name}.train.metric",
            path=path,
        )


def _split_validation_error(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """``Expected `int`, got `str` - at `$.server.port``` -> (message, "server.port")."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at ")
    if not sep:
        message, where = text, ""
    key = where.strip("`").removeprefix("$").lstrip(".") or None
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    if unknown:
        field = unknown.group(1)
        key = f"{key}.{field}" if key else field
        message = "unknown setting; see the config reference in the README"
    return message, key


def reference() -> list[tuple[str, Any, str]]:
    """Every setting as (dotted key, default, help), for the README and its test."""
    import typing

    out: list[tuple[str, Any, str]] = []

    def walk(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in msgspec.structs.fields(cls):
            default = f.default
            if f.default_factory is not msgspec.NODEFAULT:
                default = f.default_factory()
                if isinstance(default, msgspec.Struct):
                    walk(f"{prefix}{f.name}.", type(default))
                    continue
            metas = getattr(hints[f.name], "__metadata__", ())
            text = next((m.description for m in metas if getattr(m, "description", None)), "")
            out.append((prefix + f.name, default, text))

    for section in ("server", "ingest", "train", "jobs", "log"):
        walk(f"{section}.", type(getattr(Settings(), section)))
    for section in ("monitor", "drift"):
        walk(f"{section}.", type(getattr(Settings(), section)))
    walk("pipelines.NAME.", PipelineSettings)
    walk("feature_sets.NAME.", FeatureSetSettings)
    return out
