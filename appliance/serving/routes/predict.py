"""Predict: ``POST /v1/pipelines/{name}/predict``, and :meth:`Predictions.answer_predict`,
the prediction of a decoded body, which the route and the fast path
(:class:`~appliance.serving.fast_path.PredictFastPath`) share.

The route is built with the app (:func:`predict_route`), not declared once at import:
its gate (the predict token) and its OpenAPI declaration (401, security)
follow ``server.predict_token_required``. Its handler is :meth:`Predictions.predict`,
bound to the app's :class:`Predictions`, rather than given them by dependency injection
like the other routes: a provider costs a resolution on every call (about 8 µs, a sixth
of the route's own cost, measured), and predict must pay nothing that it did not pay
before.
"""

from time import thread_time
from typing import Any

from litestar import post
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath, JSONBody

from appliance.api_types import PredictRequest, PredictResponse
from appliance.core import ApplianceError, ServerSettings
from appliance.serving.auth import PredictGateMiddleware
from appliance.serving.context import ServingContext
from appliance.serving.errors import ERRORS_PIPELINE, error_spec
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.routes.shared import known_pipeline


class Predictions:
    """Predict's route and answer, with what they need from the context bound once as
    the app is built (a call pays no lookup it did not pay as a closure)."""

    __slots__ = ("context", "features", "live", "monitor", "new_ids", "predlog", "server",
                 "settings", "shadows")

    def __init__(self, context: ServingContext) -> None:
        self.context = context
        self.settings = context.settings
        self.server = context.settings.server  # ServerSettings: changed in place on SIGHUP
        self.live = context.live
        self.predlog = context.predlog
        self.new_ids = context.prediction_ids.take
        self.features = context.features
        self.monitor = context.monitor
        # The pipelines' shadows (promotion.policy = "shadow"): read per call, replaced whole.
        self.shadows = context.shadows

    def answer_predict(self, name: str, model: Any, rows: list[Any],
                       explain: int | None = None) -> PredictResponse:
        """The prediction for a decoded body: the route's work, shared with the fast path
        (and with any route that predicts: OIP, /invocations). It records the call (request
        metrics, prediction log) only once it has the answer, so a refused call leaves no
        trace to double. ``explain``: add per row the base value and the ``explain``
        largest TreeSHAP contributions (``PredictResponse.explanations``)."""
        n = len(rows)
        if not n:
            raise ApplianceError("empty_batch", "`rows` is empty; send at least one row",
                                 {"field": "rows", "expected": "1 or more rows"}, status=422)
        max_rows = self.server.max_batch_rows  # read per request: SIGHUP may change it
        if n > max_rows:
            raise ApplianceError(
                "batch_too_large", f"{n} rows in one call; at most {max_rows} "
                "(server.max_batch_rows)", {"field": "rows", "rows": n, "limit": max_rows},
                status=413,
            )
        spec = model.spec
        shadow = self.shadows.active.get(name) if self.shadows is not None else None
        if shadow is not None and shadow.take():
            # Sampled for the pipeline's shadow: the request's own rows (copied first when
            # the feature store fills them in place), production's time, then a queue.
            raw = [dict(r) for r in rows] if spec.joins or spec.derived else rows
            started = thread_time()  # CPU time, as the shadow's is measured
        else:
            shadow = None
        if spec.joins or spec.derived:  # the feature store: fill by key, then derive
            rows = self.features.prepare_rows(spec, rows,
                                              self.settings.pipeline(name).missing_key,
                                              model.derivation)
        if explain is None:
            predictions = model.predict_rows(rows)
            explanations = None
        else:
            predictions, explanations = model.predict_explained(rows, explain)
        self.monitor.requests.count_rows(name, n)
        ids = self.new_ids(n)
        if shadow is not None:  # never waits, never fails the call
            shadow.offer(raw, predictions, ids, thread_time() - started)
        predlog = self.predlog
        if predlog is not None:
            predlog.record(name, model.version, ids, predictions, rows, model.encoder.names)
        return PredictResponse(model_version=model.version, predictions=predictions,
                               prediction_ids=ids, explanations=explanations)

    def predict(self, name: FromPath[str], data: JSONBody[PredictRequest]) -> PredictResponse:
        """Predict one row or a batch. Features are matched by name; null means missing.

        Binary: the probability of the positive class; multiclass: `{"class",
        "probabilities"}`; regression: the value. One id per prediction, for feedback.
        With `"explain": k`, `explanations` holds per row the base value and the k largest
        feature contributions (exact TreeSHAP, raw-score units; one per class for
        multiclass): base_value + the sum of all contributions = raw_score.
        """
        model = self.live.get(name)  # this request finishes on this model, even across a swap
        if model is None:
            known_pipeline(self.context, name)
            raise ApplianceError(
                "no_model", f"pipeline `{name}` has no model in production yet; retry later",
                {"pipeline": name}, status=503,
            )
        return self.answer_predict(name, model, data.rows, data.explain)

    def fast_predict(self, name: str, rows: list[Any],
                     explain: int | None = None) -> PredictResponse | None:
        """The fast path's answer: None when the pipeline has no model (the route says why)."""
        model = self.live.get(name)
        return None if model is None else self.answer_predict(name, model, rows, explain)


def predict_route(predictions: Predictions, server: ServerSettings,
                  tokens: tuple[str, ...] | None) -> HTTPRouteHandler:
    """The predict route of one app, answered by its ``predictions``: ``tokens`` are the
    ones its gate accepts (None: open)."""
    predict_token_required = server.predict_token_required
    predict_auth_errors = (
        {401: error_spec(401, "missing or wrong bearer token (server.predict_token_required)")}
        if predict_token_required else {})
    return post(
        "/v1/pipelines/{name:str}/predict", status_code=200, sync_to_thread=False,
        tags=["predict"],
        middleware=[DefineMiddleware(PredictGateMiddleware, tokens=tokens)],
        security=SECURITY_ADMIN if predict_token_required else None, responses={
            **ERRORS_PIPELINE,
            **predict_auth_errors,
            400: error_spec(400, "the body is not valid JSON or not a predict request (NaN "
                                 "and Infinity are not JSON), or the Host header is not this "
                                 "appliance's"),
            413: error_spec(413, "the body is over server.max_body_bytes, or the batch over "
                                 "server.max_batch_rows"),
            415: error_spec(415, "the body is not declared as JSON (Content-Type)"),
            422: error_spec(422, "a row does not match the model's features: `details` "
                                 "names the row, the field and what was expected; or `rows` "
                                 "is empty"),
            503: error_spec(503, "the pipeline has no model yet; retry after Retry-After "
                                 "seconds"),
        })(predictions.predict)
