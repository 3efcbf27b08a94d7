"""Importing a model made elsewhere: a signed bundle from another box, or a bare LightGBM
model file (``Booster.save_model``, an sklearn ``LGBMClassifier``'s ``booster_``).

Everything is checked before anything is written: the bundle's members (paths, types,
sizes), its signature (a key in ``<state>/trusted_keys/``), its digests, that the installed
LightGBM reads the model and that it has the features its model.json says, that this
box's pipeline can feed those features (its schema, the feature sets it joins), and that
the model loads and answers. A refused import raises with the reason and registers
nothing. An accepted one is registered as a candidate, with where and when it was trained
and the signing key's id in its lineage, then goes through the pipeline's promotion
policy (:func:`appliance.models.policy.apply_policy`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import msgspec
import polars as pl

from appliance.api_types import BundleImportResponse
from appliance.core import PIPELINE_NAME, ApplianceError, Settings, StateDir
from appliance.features import Feature, FeatureSpec, dtype_from_name, feature_kind
from appliance.models import bundle as b
from appliance.models import signing
from appliance.models.policy import PolicyOutcome
from appliance.models.predictor import LoadedModel
from appliance.models.production import Production
from appliance.models.registry import Registry, library_versions
from appliance.store import Events, Store, now_iso


def _refuse(code: str, message: str, **details: Any) -> ApplianceError:
    return ApplianceError(code, message, details, status=422)


@dataclass
class PolicyParts:
    """What an import needs of the daemon: its parts, and the pipeline's promotion policy
    for a version trained elsewhere (``ModelBuilder.apply_policy``: pipeline, version, a
    one-line source)."""

    state: StateDir
    store: Store
    events: Events
    settings: Settings
    production: Production
    apply_policy: Callable[[str, int, str], PolicyOutcome]


# The policy's action -> the version's stage it leaves.
_STAGE = {"promoted": "production", "rejected": "rejected"}


class ModelImporter:
    def __init__(self, parts: PolicyParts, registry: Registry) -> None:
        self.parts = parts
        self.registry = registry
        self._lock = threading.Lock()  # one import at a time: version numbers, policy

    @property
    def trusted_dir(self) -> Any:
        return self.parts.state.root / "trusted_keys"

    def import_bytes(self, data: bytes, pipeline: str | None, *, via: str,
                     file_name: str | None = None) -> BundleImportResponse:
        """Import a bundle or a bare LightGBM model (told apart by their first bytes)."""
        limit = self.parts.settings.bundles.max_bundle_mb << 20
        shown = file_name or "the upload"
        try:
            if len(data) > limit:
                raise _refuse("bundle_too_large",
                              f"{shown} is {len(data) / 1e6:.1f} MB, over bundles.max_bundle_mb "
                              f"({limit >> 20} MB)", size=len(data))
            with self._lock:
                if b.is_bundle(data):
                    return self._bundle(data, pipeline, via, file_name)
                return self._bare(data, pipeline, via, file_name)
        except ApplianceError as err:
            self.parts.events.emit(
                "bundle_refused", f"{shown}: {err.message}; nothing was registered",
                pipeline=pipeline if pipeline and PIPELINE_NAME.match(pipeline) else None,
                level="warning", code=err.code, file=file_name, via=via)
            raise

    # --- a bundle ------------------------------------------------------------------------

    def _bundle(self, data: bytes, pipeline: str | None, via: str, file_name: str | None
                ) -> BundleImportResponse:
        settings = self.parts.settings.bundles
        unpacked = b.unpack(data, settings.max_member_mb << 20)
        key_id = None
        if unpacked.signature is None:
            if not settings.allow_unsigned:
                raise _refuse("bundle_unsigned",
                              "the bundle is not signed; sign it on export (appliance keys "
                              "generate, then appliance bundle export), or set "
                              "bundles.allow_unsigned = true to accept unsigned bundles")
        else:
            key_id = signing.verify(unpacked.signature, unpacked.manifest_bytes,
                                    self.trusted_dir)
        b.check_digests(unpacked)
        manifest = unpacked.manifest
        meta = b.read_json(unpacked, "model.json")
        lineage = b.read_json(unpacked, "lineage.json")
        versions = b.read_json(unpacked, "versions.json")
        config = b.read_json(unpacked, "config.json")
        name = self._pipeline(pipeline or str(manifest.get("pipeline", "")))
        try:
            spec = msgspec.convert(meta["spec"], FeatureSpec)
        except (KeyError, TypeError, msgspec.ValidationError) as exc:
            raise _refuse("bundle_unreadable",
                          f"the bundle's model.json has no usable feature spec ({exc})") from None
        model_bytes = unpacked.files["model.txt"]
        booster = read_model(model_bytes, "the bundle's model.txt")
        if booster.num_feature() != len(spec.columns):
            raise _refuse("bundle_model_unreadable",
                          f"the bundle's model.txt has {booster.num_feature()} features, its "
                          f"model.json {len(spec.columns)}; refused")
        self._check_feeds(name, spec)
        self._check_loads(name, booster, spec, meta)
        source = {
            "kind": "bundle", "key_id": key_id, "signed": key_id is not None,
            "bundle_sha256": hashlib.sha256(data).hexdigest(), "file": file_name,
            "pipeline": manifest.get("pipeline"), "version": manifest.get("version"),
            "trained_at": manifest.get("trained_at") or lineage.get("trained_at"),
            "exported_at": manifest.get("exported_at"),
            "exported_by": manifest.get("exported_by"),
            "trained_with": versions.get("trained_with"),
            "imported_at": now_iso(), "imported_via": via,
        }
        new_lineage = {"source": source, "origin": lineage, "origin_config": config,
                       "task": spec.task, "versions": library_versions(),
                       "trained_at": source["trained_at"]}
        new_meta = {**meta, "holdout": None, "source": source}
        message = (f"from {source['exported_by']} ({source['pipeline']} v{source['version']}, "
                   f"trained {source['trained_at']}), "
                   + (f"signed by key {key_id}" if key_id else "unsigned"))
        return self._register(name, model_bytes, new_meta, new_lineage, spec, message)

    # --- a bare LightGBM model -----------------------------------------------------------

    def _bare(self, data: bytes, pipeline: str | None, via: str, file_name: str | None
              ) -> BundleImportResponse:
        if not pipeline:
            raise _refuse("pipeline_required",
                          "a bare LightGBM model names no pipeline: say which one "
                          "(--pipeline NAME, or POST /v1/pipelines/NAME/bundles)")
        name = self._pipeline(pipeline)
        # A bare model carries no signature: it is the operator's own upload (the admin
        # token, or the shell of this box), never taken from a watched source.
        booster = read_model(data, file_name or "the model file")
        spec = self._bare_spec(name, booster, data.decode())
        self._check_loads(name, booster, spec, {})
        names = booster.feature_name()
        gains = booster.feature_importance("gain")
        source = {"kind": "model_file", "key_id": None, "signed": False,
                  "sha256": hashlib.sha256(data).hexdigest(), "file": file_name,
                  "trained_at": None, "imported_at": now_iso(), "imported_via": via,
                  "lightgbm_version": _model_version_line(data.decode())}
        meta = {
            "created_at": now_iso(), "task": spec.task,
            "task_reason": "the objective in the model file", "spec": msgspec.to_builtins(spec),
            "params": {}, "best_iteration": booster.current_iteration(), "metrics": {},
            "baseline_metrics": {}, "feature_importance": {
                n: float(g) for n, g in zip(names, gains, strict=True)},
            "lightgbm_feature_names": names, "reference": None,
            "versions": library_versions(), "primary_metric": None, "holdout": None,
            "source": source,
        }
        lineage = {"source": source, "task": spec.task, "versions": library_versions()}
        return self._register(name, data, meta, lineage, spec,
                              f"a bare LightGBM model ({file_name or 'uploaded'})")

    def _bare_spec(self, pipeline: str, booster: lgb.Booster, text: str) -> FeatureSpec:
        """The feature spec of a bare model, from its file and this pipeline's schema; every
        mapping proven, or refused."""
        record = self.parts.store.pipeline(pipeline)
        schema = record.schema if record is not None else None
        if not schema:
            raise _refuse("bundle_incompatible",
                          f"pipeline `{pipeline}` has no schema yet (no data): a bare model's "
                          "feature names are checked against it; drop a data file first")
        settings = self.parts.settings.pipeline(pipeline)
        task, k = _objective(text)
        names = booster.feature_name()
        if all(re.fullmatch(r"Column_\d+", n) for n in names):
            raise _refuse("bundle_incompatible",
                          "the model's features are unnamed (Column_0, ...): train it on a "
                          "DataFrame whose columns are the pipeline's, or pass feature_name")
        not_features = {settings.target, settings.id, settings.timestamp}
        cats = _categorical_indices(text)
        pandas_cats = _pandas_categorical(text)
        if pandas_cats is not None and len(pandas_cats) != len(cats):
            raise _refuse("bundle_incompatible",
                          f"the model file's category map (pandas_categorical) has "
                          f"{len(pandas_cats)} entries for {len(cats)} categorical features: "
                          "which codes are which categories can't be proven")
        features: list[Feature] = []
        for i, n in enumerate(names):
            if n in not_features:
                raise _refuse("bundle_incompatible",
                              f"the model reads `{n}`, which is pipeline `{pipeline}`'s target, "
                              "id or timestamp, never a feature")
            if n not in schema:
                raise _refuse("bundle_incompatible",
                              f"the model's feature `{n}` is not a column of pipeline "
                              f"`{pipeline}` (its columns: {sorted(schema)}); LightGBM changes "
                              "some characters of names (spaces to `_`): rename the columns "
                              "before training", feature=n)
            dtype = dtype_from_name(schema[n])
            kind = feature_kind(dtype) if dtype is not None else None
            if i in cats:
                j = cats.index(i)
                mapping = pandas_cats[j] if pandas_cats is not None else None
                if kind == "categorical" and mapping is not None and all(
                        isinstance(c, str) for c in mapping):
                    features.append(Feature(name=n, kind="categorical", dtype=schema[n],
                                            categories=list(mapping)))
                elif kind == "numeric" and dtype is not None and dtype.is_integer() and \
                        mapping is None:
                    # LightGBM takes the integer itself as the category: no map to prove.
                    features.append(Feature(name=n, kind="numeric", dtype=schema[n]))
                else:
                    raise _refuse(
                        "bundle_incompatible",
                        f"the model treats `{n}` as categorical, and the mapping from "
                        f"pipeline `{pipeline}`'s values ({schema[n]}) to its category codes "
                        "can't be proven: a text column needs the file's category map "
                        "(pandas_categorical, written when trained on a pandas category "
                        "column), an integer column must be the codes themselves", feature=n)
            elif kind in ("numeric", "boolean"):
                features.append(Feature(name=n, kind=kind, dtype=schema[n]))
            else:
                raise _refuse("bundle_incompatible",
                              f"the model reads `{n}` as a number; pipeline `{pipeline}`'s "
                              f"`{n}` is {schema[n]}", feature=n)
        classes = self._classes(pipeline, task, k, schema.get(settings.target), settings.target)
        return FeatureSpec(task=task, target=settings.target, classes=classes,
                           features=features)

    def _classes(self, pipeline: str, task: str, k: int, target_type: str | None,
                 target: str) -> list[Any] | None:
        if task == "regression":
            return None
        if target_type is None:
            raise _refuse("bundle_incompatible",
                          f"pipeline `{pipeline}` has no target column `{target}` in its schema")
        dtype = dtype_from_name(target_type)
        if dtype is not None and dtype == pl.Boolean and k == 2:
            classes: list[Any] = [False, True]
        elif dtype is not None and dtype.is_integer():
            classes = list(range(k))
        else:
            raise _refuse("bundle_incompatible",
                          f"the model's classes are the numbers 0..{k - 1}; pipeline "
                          f"`{pipeline}`'s target `{target}` is {target_type}: which value is "
                          "which class can't be proven")
        live = self.parts.production.live.get(pipeline)
        if live is not None and live.spec.classes is not None and live.spec.classes != classes:
            raise _refuse("bundle_incompatible",
                          f"the model's classes are {classes}; pipeline `{pipeline}`'s are "
                          f"{live.spec.classes}: which is which can't be proven")
        return classes

    # --- shared --------------------------------------------------------------------------

    def _pipeline(self, name: str) -> str:
        if not PIPELINE_NAME.match(name):
            raise _refuse("unknown_pipeline", f"`{name}` is not a valid pipeline name")
        known = name in self.parts.settings.pipelines or \
            self.parts.store.pipeline(name) is not None
        if not known or name in self.parts.settings.feature_sets:
            raise _refuse("unknown_pipeline",
                          f"this box runs no pipeline `{name}`: declare it ([pipelines.{name}] "
                          "in the config) or import with --pipeline NAME", pipeline=name)
        return name

    def _check_feeds(self, pipeline: str, spec: FeatureSpec) -> None:
        """This box's pipeline can feed every feature: joined ones from feature sets it
        declares, derived ones from their inputs, the rest from its schema's columns."""
        record = self.parts.store.pipeline(pipeline)
        if record is not None and record.task and record.task != spec.task:
            raise _refuse("bundle_incompatible",
                          f"the model is {spec.task}; pipeline `{pipeline}` is {record.task}; "
                          "refused", task=spec.task)
        joined: set[str] = set()
        for join in spec.joins:
            fs = join.get("feature_set")
            declared = self.parts.settings.feature_sets.get(str(fs))
            if declared is None:
                raise _refuse("bundle_incompatible",
                              f"the model joins feature set `{fs}`, which this box does not "
                              f"declare ([feature_sets.{fs}]); refused", feature_set=fs)
            if declared.key != join.get("key"):
                raise _refuse("bundle_incompatible",
                              f"the model joins feature set `{fs}` by `{join.get('key')}`; "
                              f"this box keys it by `{declared.key}`; refused", feature_set=fs)
            fs_record = self.parts.store.pipeline(str(fs))
            columns = join.get("columns") or []
            lacking = [c for c in columns if fs_record is not None and fs_record.schema
                       and c not in fs_record.schema]
            if lacking:
                raise _refuse("bundle_incompatible",
                              f"the model joins {lacking} from feature set `{fs}`, which this "
                              "box's version of it does not have; refused", feature_set=fs)
            joined.update(columns)
        schema = record.schema if record is not None else None
        if not schema:
            return  # no data here yet: nothing to check the columns against
        needed: dict[str, str] = {}
        for f in spec.features:
            if f.name not in spec.derived and f.name not in joined:
                needed[f.name] = f.kind
        for col, dtype in spec.derived_inputs.items():
            if col not in joined:
                needed.setdefault(col, feature_kind(dtype_from_name(dtype) or _NULL) or "?")
        for col, kind in needed.items():
            if col not in schema:
                raise _refuse("bundle_incompatible",
                              f"the model needs column `{col}`, which pipeline `{pipeline}` "
                              f"does not have (its columns: {sorted(schema)}); refused",
                              column=col)
            dtype = dtype_from_name(schema[col])
            have = feature_kind(dtype) if dtype is not None else None
            if have != kind and {have, kind} != {"numeric", "boolean"}:
                raise _refuse("bundle_incompatible",
                              f"the model reads `{col}` as {kind}; pipeline `{pipeline}`'s "
                              f"`{col}` is {schema[col]} ({have}); refused", column=col)

    def _check_loads(self, pipeline: str, booster: lgb.Booster, spec: FeatureSpec,
                     meta: dict[str, Any]) -> None:
        """The model loads and answers as it would serve (derived features compiled, the
        single-row path set up), before anything is registered."""
        try:
            model = LoadedModel(pipeline=pipeline, version=0, booster=booster, spec=spec,
                                meta=meta)
            model.warm()
        except Exception as exc:
            raise _refuse("bundle_model_unusable",
                          f"the model can't be served here ({type(exc).__name__}: {exc}); "
                          "refused") from None

    def _register(self, pipeline: str, model_bytes: bytes, meta: dict[str, Any],
                  lineage: dict[str, Any], spec: FeatureSpec, message: str
                  ) -> BundleImportResponse:
        parts = self.parts
        parts.store.ensure_pipeline(pipeline)
        record = self.registry.register_files(pipeline, model_bytes, meta, lineage)
        if parts.store.pipeline(pipeline) is not None:
            parts.store.set_pipeline_task(pipeline, spec.task)
        source = lineage["source"]
        parts.events.emit("bundle_imported", f"v{record.version} imported {message}",
                          pipeline=pipeline, version=record.version,
                          key_id=source.get("key_id"), source_kind=source["kind"])
        shown = (f"bundle (key {source['key_id']})" if source.get("key_id") else
                 "bundle (unsigned)" if source["kind"] == "bundle" else "model file")
        try:
            outcome = parts.apply_policy(pipeline, record.version, shown)
        except ApplianceError as err:
            if err.code not in ("no_labelled_data", "not_scorable"):
                self.registry.reject(pipeline, record.version, f"not loadable: {err.message}")
                raise
            outcome = self._unscored(pipeline, record.version, err)
        return BundleImportResponse(
            pipeline=pipeline, version=record.version,
            stage=_STAGE.get(outcome.action, "candidate"),
            policy=outcome.policy, reason=outcome.reason, kind=source["kind"],
            key_id=source.get("key_id"), source=source)

    def _unscored(self, pipeline: str, version: int, err: ApplianceError) -> PolicyOutcome:
        """The gate can't score the import on this box's data. With no production model and
        no labelled data at all (a box that only serves), it is promoted as the pipeline's
        first model: it passed its own box's gate, and was checked here for everything but
        accuracy. Otherwise it stays a candidate for an operator."""
        parts = self.parts
        policy = parts.settings.pipeline(pipeline).promotion.policy
        if err.code == "no_labelled_data" and parts.store.production_model(pipeline) is None:
            reason = (f"policy {policy}: no labelled data on this box to score it on, and no "
                      "production model: promoted as the pipeline's first model")
            parts.production.promote(pipeline, version, reason)
            return PolicyOutcome(policy, "promoted", reason)
        reason = (f"policy {policy}: {err.message}; it stays a candidate (appliance promote "
                  f"{pipeline} {version})")
        parts.store.set_model_stage(pipeline, version, "candidate", reason)
        return PolicyOutcome(policy, "waiting", reason)


_NULL = dtype_from_name("Float64")


def read_model(data: bytes, shown: str) -> lgb.Booster:
    """A LightGBM model text the installed LightGBM reads, or a refusal. The text is checked
    for completeness first: LightGBM aborts the whole process on some truncated files."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise _refuse("bundle_model_unreadable",
                      f"{shown} is not LightGBM's text model format (not UTF-8 text); save it "
                      "with Booster.save_model") from None
    if not text.startswith("tree\n") or "\nend of trees" not in text or \
            "\nfeature_names=" not in text or "\ntree_sizes=" not in text:
        raise _refuse("bundle_model_unreadable",
                      f"{shown} is not a complete LightGBM text model (Booster.save_model): its "
                      "header or its `end of trees` line is missing")
    version = _model_version_line(text)
    if version not in ("v2", "v3", "v4"):
        raise _refuse("bundle_model_unreadable",
                      f"{shown} is LightGBM model format {version}, which the installed "
                      f"LightGBM {lgb.__version__} does not read; refused")
    try:
        booster = lgb.Booster(model_str=text)
    except Exception as exc:
        raise _refuse("bundle_model_unreadable",
                      f"the installed LightGBM {lgb.__version__} can't read {shown} ({exc}); "
                      "refused") from None
    return booster


def _model_version_line(text: str) -> str | None:
    m = re.search(r"^version=(\S+)$", text[:4096], re.M)
    return m.group(1) if m else None


def _objective(text: str) -> tuple[str, int]:
    m = re.search(r"^objective=(\S+)(.*)$", text[:65536], re.M)
    objective = m.group(1) if m else ""
    k_match = re.search(r"^num_class=(\d+)$", text[:4096], re.M)
    k = int(k_match.group(1)) if k_match else 1
    if objective in ("binary", "cross_entropy", "xentropy"):
        return "binary", 2
    if objective in ("multiclass", "multiclassova", "softmax", "multiclass_ova", "ova"):
        return "multiclass", k
    if objective in ("regression", "regression_l2", "l2", "mse", "regression_l1", "l1",
                     "mae", "huber", "fair", "poisson", "quantile", "mape", "gamma",
                     "tweedie", "rmse", "root_mean_squared_error"):
        return "regression", 1
    raise _refuse("bundle_incompatible",
                  f"the model's objective `{objective or 'unknown'}` is not binary, multiclass "
                  "or regression")


def _categorical_indices(text: str) -> list[int]:
    m = re.search(r"^\[categorical_feature: ([0-9,]*)\]$", text, re.M)
    if m and m.group(1):
        return sorted(int(i) for i in m.group(1).split(","))
    info = re.search(r"^feature_infos=(.*)$", text[:1 << 20], re.M)
    if not info:
        return []
    return [i for i, v in enumerate(info.group(1).split(" "))
            if v != "none" and not v.startswith("[")]


def _pandas_categorical(text: str) -> list[list[Any]] | None:
    m = re.search(r"^pandas_categorical:(.*)$", text[-(1 << 22):], re.M)
    if not m:
        return None
    try:
        value = json.loads(m.group(1))
    except ValueError:
        raise _refuse("bundle_incompatible",
                      "the model file's category map (pandas_categorical) is not JSON: which "
                      "codes are which categories can't be proven") from None
    return value if isinstance(value, list) else None
