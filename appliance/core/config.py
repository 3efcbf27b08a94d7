"""Settings: defaults < ``appliance.toml`` < environment < command-line flags.

Every setting is declared once, in ``appliance.core.settings``, with its default and its
help text; this module loads a file into those Structs and checks what msgspec cannot.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from appliance.core.errors import ApplianceError
from appliance.core.settings import (  # noqa: F401 (re-exported: the settings' one address)
    CONFIG_FILE_NAME,
    DEFAULT_STATE_DIR,
    DaskSettings,
    DriftSettings,
    FeatureSetSettings,
    IngestSettings,
    JobsSettings,
    LogLevel,
    LogSettings,
    MonitorSettings,
    OnlineStoreSettings,
    PipelineSettings,
    PipelineTrainSettings,
    RetentionSettings,
    RetrainSettings,
    ServerSettings,
    Settings,
    Task,
    TrainSettings,
)


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
        _check_csv(f"pipelines.{name}", pipelines[name], path)
    feature_sets = _parse_feature_sets(raw.get("feature_sets", {}), pipelines, path)
    rest = {k: v for k, v in raw.items() if k not in ("pipelines", "feature_sets")}
    try:
        settings = msgspec.convert(rest, Settings)
    except msgspec.ValidationError as exc:
        message, key = _split_validation_error(exc)
        raise ConfigError(message, key=key, path=path) from None
    settings.pipelines = pipelines
    settings.feature_sets = feature_sets
    _check_dask(settings, path)
    return settings


DASK_INSTALL = "pip install 'appliance[dask]'"


def dask_missing() -> list[str]:
    """The libraries engine = "dask" needs that are not installed (not imported here)."""
    import importlib.util

    return [name for name in ("dask", "distributed", "sklearn")
            if importlib.util.find_spec(name) is None]


def _check_dask(settings: Settings, path: Path | None) -> None:
    """engine = "dask" needs a scheduler address and the optional libraries."""
    users = [n for n in settings.pipelines if settings.engine(n) == "dask"]
    if not users and settings.train.engine != "dask":
        return
    key = (f"pipelines.{users[0]}.train.engine"
           if users and settings.pipelines[users[0]].train.engine else "train.engine")
    if not settings.dask.scheduler:
        raise ConfigError(
            'engine = "dask" needs the scheduler\'s address: set [dask] scheduler = '
            '"tcp://HOST:8786"', key="dask.scheduler", path=path)
    missing = dask_missing()
    if missing:
        raise ConfigError(
            f'engine = "dask" needs {", ".join(missing)}, which this install lacks: run '
            f"{DASK_INSTALL} (in the appliance's virtualenv), or set engine = \"local\"",
            key=key, path=path)


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
        _check_csv(where, fs, path)
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


def _check_csv(where: str, section: PipelineSettings | FeatureSetSettings,
               path: Path | None) -> None:
    if section.csv_decimal == "," and section.csv_separator == ",":
        raise ConfigError(
            "a decimal comma needs another column separator: set csv_separator = \";\" (or "
            "\"\\t\"), or leave it \"auto\"", key=f"{where}.csv_decimal", path=path)
    try:  # a text codec Python knows (not a bytes-to-bytes one such as base64)
        "a,b\n".encode(section.csv_encoding)
    except LookupError:
        raise ConfigError(
            f"{section.csv_encoding!r} is not a text encoding Python knows; use \"utf-8\", "
            "\"cp1252\", \"latin-1\" or \"utf-16\", say", key=f"{where}.csv_encoding",
            path=path) from None


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
    for section in ("monitor", "drift", "retention", "online_store", "bundles"):
        walk(f"{section}.", type(getattr(Settings(), section)))
    for section in ("shadow", "rollout", "dask"):
        walk(f"{section}.", type(getattr(Settings(), section)))
    walk("pipelines.NAME.", PipelineSettings)
    walk("feature_sets.NAME.", FeatureSetSettings)
    return out
