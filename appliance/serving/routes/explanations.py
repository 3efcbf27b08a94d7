"""Explanations of logged predictions: ``GET /v1/pipelines/{name}/explanations/latest``,
the newest prediction of the serving model whose inputs the prediction log sampled,
explained by that model (what the console shows beside the traffic).

The inputs the log keeps are the model's features as it saw them (joined and derived
values included), so the model explains them without the feature store. Only the version
that made the prediction explains it: after a swap, the newest prediction of the new
version is the one shown. Predictions themselves are explained by ``"explain": k`` on the
predict route (``routes/predict.py``).
"""

from datetime import UTC, datetime
from typing import Annotated

from litestar import get
from litestar.params import FromPath, Parameter

from appliance.api_types import LatestExplanation
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_PIPELINE, ERRORS_QUERY
from appliance.serving.routes.shared import known_pipeline

# How many of a pipeline's newest predictions are searched for a sampled one: a bounded
# read whatever server.log_sample_rate is.
SEARCHED = 10_000


@get("/v1/pipelines/{name:str}/explanations/latest", sync_to_thread=True,
     tags=["predict"], responses={**ERRORS_QUERY, **ERRORS_PIPELINE})
def latest_explanation(name: FromPath[str], context: Context,
                       k: Annotated[int, Parameter(ge=1, le=10_000)] = 5) -> LatestExplanation:
    """The newest prediction of the serving model whose inputs were sampled for the
    prediction log, explained: base value and the k largest feature contributions (exact
    TreeSHAP, raw-score units; one per class for multiclass). None yet: `message` says why.
    """
    known_pipeline(context, name)
    model = context.live.get(name)
    if model is None:
        return LatestExplanation(pipeline=name, model_version=None,
                                 message=f"pipeline `{name}` has no model in production yet")
    found = context.store.latest_sampled_prediction(name, model.version, SEARCHED)
    if found is None:
        rate = context.settings.server.log_sample_rate
        why = ("server.log_sample_rate is 0: no inputs are kept" if rate <= 0 else
               f"the prediction log keeps the inputs of {rate:.0%} of predictions")
        return LatestExplanation(
            pipeline=name, model_version=model.version,
            message=f"no prediction of v{model.version} with its inputs logged among the "
                    f"{SEARCHED:,} newest ({why}); predict, or ask with \"explain\": k")
    prediction_id, ts, output, inputs = found
    _, explanations = model.predict_explained([inputs], k)
    return LatestExplanation(
        pipeline=name, model_version=model.version, prediction_id=prediction_id,
        ts=datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        prediction=output, explanations=explanations[0])


ROUTES = [latest_explanation]
