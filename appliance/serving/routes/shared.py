"""What the routes of several resources share: the 404 of an unknown pipeline, a model
record as the API shows it, and the bound of integer parameters (SQLite's int64)."""

from appliance.api_types import ModelInfo
from appliance.core import ApplianceError
from appliance.serving.context import ServingContext
from appliance.store import ModelRecord

MAX_INT64 = 2**63 - 1


def known_pipeline(context: ServingContext, name: str) -> None:
    """Raise the 404 of a pipeline that is neither declared nor has received a file."""
    if name not in context.settings.pipelines and context.store.pipeline(name) is None:
        raise ApplianceError(
            "unknown_pipeline",
            f"no pipeline `{name}`; a pipeline exists once its folder inbox/{name}/ has "
            "received a file, or it is declared in appliance.toml",
            {"pipeline": name}, status=404,
        )


def model_info(r: ModelRecord) -> ModelInfo:
    return ModelInfo(version=r.version, stage=r.stage, task=r.task, metrics=r.metrics,
                     lineage=r.lineage, decision=r.decision, created_at=r.created_at,
                     promoted_at=r.promoted_at)
