"""Features: from a pipeline's columns to a model's matrix (the spec, the row encoder),
the feature store (feature sets joined as of each row's time, derived features, the online
store) and the profile of a model's training data that drift is measured against.

``appliance.features.profile`` is a public module too."""

from appliance.features.featurestore import FeatureStore, RowDerivation
from appliance.features.profile import prediction_stats, reference_stats
from appliance.features.sampling import CHECK_MAX_ROWS, read_rows
from appliance.features.spec import (
    Feature,
    FeatureSpec,
    RowEncoder,
    RowError,
    booster_feature_names,
    build_spec,
    category_counts,
    dtype_from_name,
    encode_target,
    feature_kind,
    infer_task,
    to_matrices,
    to_matrix,
)

__all__ = [
    "CHECK_MAX_ROWS",
    "Feature",
    "FeatureSpec",
    "FeatureStore",
    "RowDerivation",
    "RowEncoder",
    "RowError",
    "booster_feature_names",
    "build_spec",
    "category_counts",
    "dtype_from_name",
    "encode_target",
    "feature_kind",
    "infer_task",
    "prediction_stats",
    "read_rows",
    "reference_stats",
    "to_matrices",
    "to_matrix",
]
