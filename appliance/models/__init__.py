"""Models: LightGBM training, the gate, the registry of versions on disk, which version
serves (promotion, rollback), the loaded predictor that answers requests, and the check of
a new labelled batch against the production model (suspect labels).

``appliance.models.metrics`` (the metrics and their paired comparisons) is a public module
too."""

from appliance.models.backtest import Backtests
from appliance.models.build import ModelBuilder
from appliance.models.gate import Decision, decide
from appliance.models.metrics import primary_metric
from appliance.models.policy import PolicyOutcome, ShadowStarter, apply_policy
from appliance.models.predictor import LiveModels, LoadedModel
from appliance.models.production import Production
from appliance.models.registry import Registry, library_versions, sha256_file
from appliance.models.suspect import LabelCheck, check_frame, label_profile
from appliance.models.train import (
    Candidate,
    Source,
    TrainingCancelled,
    load_training_data,
    train,
    training_threads,
)

__all__ = [
    "Backtests",
    "Candidate",
    "Decision",
    "LabelCheck",
    "LiveModels",
    "LoadedModel",
    "ModelBuilder",
    "PolicyOutcome",
    "Production",
    "Registry",
    "ShadowStarter",
    "Source",
    "TrainingCancelled",
    "apply_policy",
    "check_frame",
    "decide",
    "label_profile",
    "library_versions",
    "load_training_data",
    "primary_metric",
    "sha256_file",
    "train",
    "training_threads",
]
