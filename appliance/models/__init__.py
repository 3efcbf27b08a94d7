"""Models: LightGBM training, the gate, the registry of versions on disk, which version
serves (promotion, rollback), the loaded predictor that answers requests, and the check of
a new labelled batch against the production model (suspect labels).

``appliance.models.metrics`` (the metrics and their paired comparisons) is a public module
too."""

from typing import Any

from appliance.models.backtest import Backtests
from appliance.models.build import ModelBuilder
from appliance.models.bundle import bundle_pipeline
from appliance.models.data import Source, load_training_data
from appliance.models.export import export_bundle
from appliance.models.gate import Decision, decide
from appliance.models.importer import ModelImporter, PolicyParts
from appliance.models.metrics import primary_metric
from appliance.models.policy import PolicyOutcome, ShadowStarter, apply_policy
from appliance.models.predictor import LiveModels, LoadedModel
from appliance.models.production import Production
from appliance.models.registry import Registry, library_versions, sha256_file
from appliance.models.signing import generate_keys, load_private_key
from appliance.models.suspect import LabelCheck, check_frame, label_profile
from appliance.models.train import (
    Candidate,
    TrainingCancelled,
    train,
    training_threads,
)


def check_dask_cluster(settings: Any, state_root: str = ""
                       ) -> list[tuple[str, str, str | None]]:
    """``appliance doctor``'s check of the Dask scheduler of ``settings`` (a DaskSettings):
    (status, message, fix) per finding. Imports dask only when called."""
    from appliance.models.dask_engine import check_cluster

    return check_cluster(settings, state_root)


__all__ = [
    "Backtests",
    "Candidate",
    "Decision",
    "LabelCheck",
    "LiveModels",
    "LoadedModel",
    "ModelBuilder",
    "ModelImporter",
    "PolicyOutcome",
    "PolicyParts",
    "Production",
    "Registry",
    "ShadowStarter",
    "Source",
    "TrainingCancelled",
    "apply_policy",
    "bundle_pipeline",
    "check_dask_cluster",
    "check_frame",
    "decide",
    "export_bundle",
    "generate_keys",
    "label_profile",
    "library_versions",
    "load_private_key",
    "load_training_data",
    "primary_metric",
    "sha256_file",
    "train",
    "training_threads",
]
