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


class IngestSettings(_Section):
    settle_seconds: Annotated[
        float, _doc("a file is taken once its size and mtime are unchanged this long"),
        msgspec.Meta(ge=0),
    ] = 2.0
    rescan_seconds: Annotated[
        float, _doc("full rescan of the inbox, to catch what file events missed"),
        msgspec.Meta(gt=0),
    ] = 30.0
    max_file_mb: Annotated[
        int, _doc("files larger than this are refused"), msgspec.Meta(ge=1)
    ] = 4096
    max_columns: Annotated[
        int, _doc("files with more columns than this are refused"), msgspec.Meta(ge=1)
    ] = 2000


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


class RetrainSettings(_Section):
    min_new_rows: Annotated[
        int, _doc("retrain once this many new rows have been ingested"), msgspec.Meta(ge=1)
    ] = 1
    on_drift: Annotated[bool, _doc("retrain when drift is detected")] = False
    cron: Annotated[str | None, _doc("retrain on this crontab schedule")] = None


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
            from appliance.errors import ApplianceError
            from appliance.featurestore import compile_expression

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
    walk("pipelines.NAME.", PipelineSettings)
    walk("feature_sets.NAME.", FeatureSetSettings)
    return out
