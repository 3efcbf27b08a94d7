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


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    pipelines: dict[str, PipelineSettings] = msgspec.field(default_factory=dict)

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
    rest = {k: v for k, v in raw.items() if k != "pipelines"}
    try:
        settings = msgspec.convert(rest, Settings)
    except msgspec.ValidationError as exc:
        message, key = _split_validation_error(exc)
        raise ConfigError(message, key=key, path=path) from None
    settings.pipelines = pipelines
    return settings


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
                sub = f.default_factory()
                if isinstance(sub, msgspec.Struct):
                    walk(f"{prefix}{f.name}.", type(sub))
                    continue
                default = sub  # a list or table setting, e.g. server.allowed_hosts = []
                if isinstance(sub, dict):
                    continue  # a table of sections (pipelines), documented by its own rows
            metas = getattr(hints[f.name], "__metadata__", ())
            text = next((m.description for m in metas if getattr(m, "description", None)), "")
            out.append((prefix + f.name, default, text))

    for section in ("server", "ingest", "train", "log"):
        walk(f"{section}.", type(getattr(Settings(), section)))
    walk("pipelines.NAME.", PipelineSettings)
    return out
