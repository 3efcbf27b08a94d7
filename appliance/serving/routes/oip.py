"""The Open Inference Protocol V2, REST (KServe's, spoken by Triton, MLServer and their
clients): ``/v2``, ``/v2/health/live|ready``, ``/v2/models/{name}[/versions/{v}]``,
``.../ready`` and ``POST .../infer``.

A pipeline is a model; its registry versions are the model's versions, and the version
in production is the one loaded (a version that is asked for is served if it is the one
loaded, else refused with a 4xx that says which one is). Infer takes one named input per
column (``protocols.py``) and answers through the predict route's own machinery
(:meth:`Predictions.answer_predict`): the same validation, feature store, metrics,
prediction log, drift sample and hot swap. Every refusal is the predict route's, with the
protocol's ``{"error": message}`` beside the appliance's own fields.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.openapi import ResponseSpec
from litestar.params import FromPath

from appliance import __version__
from appliance.api_types import (
    OipInferResponse,
    OipLive,
    OipModelMetadata,
    OipModelReady,
    OipReady,
    OipServerMetadata,
    PredictResponse,
)
from appliance.core import ApplianceError
from appliance.serving.asgi import header
from appliance.serving.auth import PredictGateMiddleware
from appliance.serving.context import ServingContext
from appliance.serving.errors import oip_error, protocol_error_spec, protocol_exception_handlers
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.protocols import (
    decode_infer,
    explain_of,
    infer_outputs,
    infer_rows,
    model_metadata,
    output_tensors,
)
from appliance.serving.routes.shared import known_pipeline

HANDLERS = protocol_exception_handlers(oip_error)
_NOT_FOUND = protocol_error_spec("no such pipeline (model), or no such version of it")
_HOST = {400: protocol_error_spec("the Host header is not this appliance's")}
_MODEL_ERRORS = {
    **_HOST, 404: _NOT_FOUND,
    409: protocol_error_spec("that version is registered but not the one served (the "
                             "production version is); promote it to serve it"),
    503: protocol_error_spec("the pipeline has no model yet; retry after Retry-After seconds"),
}


def answer_rows(predictions: Any, name: str, model: Any, rows: list[Any],
                explain: int | None) -> PredictResponse:
    """The predict route's answer for the protocols' rows. ``explain`` (the request
    parameter, top k contributions per row) is parsed by both protocols and answered as
    the predict route's ``"explain": k`` (``PredictResponse.explanations``)."""
    result: PredictResponse = predictions.answer_predict(name, model, rows, explain)
    return result


class OipRoutes:
    """The protocol's routes over the app's predict machinery."""

    def __init__(self, context: ServingContext, predictions: Any) -> None:
        self.context = context
        self.predictions = predictions
        self.live = context.live
        self.server = context.settings.server

    # --- the model a path names ----------------------------------------------------------

    def model(self, name: str, version: str | None) -> Any:
        """The loaded model of ``name`` (at ``version``, when given), else the 4xx that
        says why not."""
        model = self.live.get(name)  # the request finishes on this model, across a swap
        if model is None:
            known_pipeline(self.context, name)
            raise ApplianceError(
                "no_model", f"pipeline `{name}` has no model in production yet; retry later",
                {"pipeline": name}, status=503)
        if version is not None and version != str(model.version):
            self._refuse_version(name, version, model.version)
        return model

    def _refuse_version(self, name: str, version: str, serving: int) -> None:
        number = version[1:] if version[:1] in "vV" else version
        registered = number.isascii() and number.isdigit() and int(number) <= 2**63 - 1 and (
            self.context.store.model(name, int(number)) is not None)
        if registered and int(number) == serving:
            return  # "v3" for 3
        if registered:
            raise ApplianceError(
                "version_not_served",
                f"version {number} of `{name}` is registered but not served: this box serves "
                f"version {serving} (production); promote {number} to serve it",
                {"pipeline": name, "version": number, "serving": serving}, status=409)
        raise ApplianceError(
            "unknown_version", f"pipeline `{name}` has no version `{version}`; it serves "
            f"version {serving}", {"pipeline": name, "version": version, "serving": serving},
            status=404)

    # --- server ----------------------------------------------------------------------------

    def server_metadata(self) -> OipServerMetadata:
        """The server: its name, version and the protocol extensions it supports."""
        return OipServerMetadata(name="appliance", version=__version__, extensions=[])

    def live_probe(self) -> OipLive:
        """Liveness: 200 while the process serves."""
        return OipLive(live=True)

    def ready_probe(self) -> Response[OipReady]:
        """Readiness: started, and every pipeline with a production model has it loaded
        (as ``/ready``); 503 until then."""
        ok = self.context.started and all(
            (m := self.live.get(name)) is not None and m.version == version
            for name, version in self.context.store.production_versions().items())
        return Response(OipReady(ready=ok), status_code=200 if ok else 503)

    # --- models ----------------------------------------------------------------------------

    def metadata(self, name: str, version: str | None = None) -> OipModelMetadata:
        """A pipeline as a model: its input columns (one named input each, variable first
        dimension; FP64, INT64, BOOL, or BYTES for text and dates), its outputs, and its
        registry versions."""
        model = self.model(name, version)
        versions = sorted(r.version for r in self.context.store.models(name))
        return model_metadata(name, model, versions)

    def model_ready(self, name: str, version: str | None = None) -> Response[OipModelReady]:
        """200 with ready true when the model (that version) is loaded; 503 with ready
        false while the pipeline has no model."""
        try:
            self.model(name, version)
        except ApplianceError as exc:
            if exc.status != 503:
                raise
            return Response(OipModelReady(name=name, ready=False), status_code=503,
                            headers={"Retry-After": "5"})
        return Response(OipModelReady(name=name, ready=True))

    async def infer(self, request: Request[Any, Any, Any], name: str,
                    version: str | None = None) -> OipInferResponse:
        body = await request.body()
        return self.answer(name, version, body,
                           header(request.scope, b"inference-header-content-length"))

    def answer(self, name: str, version: str | None, body: bytes,
               header_length: bytes | None) -> OipInferResponse:
        """The answer of infer for a body: the route's, and the fast path's (which hands
        any call this raises for to the route). It records the call only once it has the
        answer."""
        model = self.model(name, version)
        req, binary = decode_infer(body, header_length)
        explain = explain_of(req.parameters)
        requested = None
        if req.outputs:
            requested = [o.name for o in req.outputs]
            known = [t.name for t in output_tensors(model.spec)]
            unknown = [n for n in requested if n not in known]
            if unknown:
                raise ApplianceError(
                    "unknown_output", f"output `{unknown[0]}` is not one of this model's: "
                    f"{', '.join(known)}", {"field": "outputs", "expected": known},
                    status=400)
        rows = infer_rows(req, binary, self.server.max_batch_rows)
        answer = answer_rows(self.predictions, name, model, rows, explain)
        return OipInferResponse(model_name=name, model_version=str(answer.model_version),
                                id=req.id, outputs=infer_outputs(model, answer, requested),
                                parameters=None if answer.explanations is None else
                                {"explanations": answer.explanations})

    def fast_answer(self, path: str, body: bytes, header_length: bytes | None
                    ) -> OipInferResponse | None:
        """The fast path's answer for ``POST /v2/models/{name}[/versions/{v}]/infer``;
        None for a path the route must answer (it says why)."""
        inner = path[len("/v2/models/"):-len("/infer")]
        name, _, version = inner.partition("/versions/")
        if not name or "/" in name or "/" in version or (_ and not version):
            return None
        return self.answer(name, version or None, body, header_length)


_INFER_DOC = """Predict: one named input per column (shape [N] or [N, 1]), in row order; the
outputs carry the predict route's numbers (binary: `probability`; multiclass:
`probabilities` [N, classes] and `label`; regression: `value`), the prediction ids (for
feedback) and the model version. JSON null, or NaN in a float input, is a missing value.
The binary tensor extension is accepted for inputs."""


def oip_routes(routes: OipRoutes, tokens: tuple[str, ...] | None) -> list[HTTPRouteHandler]:
    """The protocol's handlers of one app; ``tokens``: those infer accepts (None: open)."""
    token_required = tokens is not None
    common: dict[str, Any] = {"tags": ["open inference protocol"],
                              "exception_handlers": HANDLERS}
    infer_errors = {
        **_MODEL_ERRORS,
        400: protocol_error_spec(
            "the body is not an inference request (JSON, one input per column, shape [N] "
            "or [N, 1]), or the Host header is not this appliance's"),
        413: protocol_error_spec("the body is over server.max_body_bytes, or the batch over "
                                 "server.max_batch_rows"),
        415: protocol_error_spec("the body is not declared as JSON (Content-Type)"),
        422: protocol_error_spec("a value does not match the model's column: `details` "
                                 "names the row and the column; or there are no rows"),
        **({401: protocol_error_spec("missing or wrong bearer token "
                                     "(server.predict_token_required)")}
           if token_required else {}),
    }
    r = routes

    def metadata(name: FromPath[str]) -> OipModelMetadata:
        return r.metadata(name)

    def version_metadata(name: FromPath[str], version: FromPath[str]) -> OipModelMetadata:
        return r.metadata(name, version)

    def ready(name: FromPath[str]) -> Response[OipModelReady]:
        return r.model_ready(name)

    def version_ready(name: FromPath[str], version: FromPath[str]) -> Response[OipModelReady]:
        return r.model_ready(name, version)

    async def infer(request: Request[Any, Any, Any], name: FromPath[str]) -> OipInferResponse:
        return await r.infer(request, name)

    async def version_infer(request: Request[Any, Any, Any], name: FromPath[str],
                            version: FromPath[str]) -> OipInferResponse:
        return await r.infer(request, name, version)

    for f in (metadata, version_metadata):
        f.__doc__ = r.metadata.__doc__
    for f in (ready, version_ready):
        f.__doc__ = r.model_ready.__doc__
    for f in (infer, version_infer):
        f.__doc__ = _INFER_DOC
    model_path = "/v2/models/{name:str}"
    version_path = model_path + "/versions/{version:str}"
    ready_spec = {**_MODEL_ERRORS, 503: ResponseSpec(
        data_container=OipModelReady, description="the pipeline has no model yet")}
    gate = [DefineMiddleware(PredictGateMiddleware, tokens=tokens,
                             media=frozenset({"application/octet-stream"}), reshape=oip_error)]
    security = SECURITY_ADMIN if token_required else None
    return [
        get("/v2", sync_to_thread=False, responses=_HOST, **common)(r.server_metadata),
        get("/v2/health/live", sync_to_thread=False, responses=_HOST,
            **common)(r.live_probe),
        get("/v2/health/ready", sync_to_thread=True, responses={
            **_HOST, 503: ResponseSpec(data_container=OipReady, description="not ready yet")},
            **common)(r.ready_probe),
        get(model_path, sync_to_thread=True, responses=_MODEL_ERRORS, **common)(metadata),
        get(version_path, sync_to_thread=True, responses=_MODEL_ERRORS,
            **common)(version_metadata),
        get(model_path + "/ready", sync_to_thread=True, responses=ready_spec,
            **common)(ready),
        get(version_path + "/ready", sync_to_thread=True, responses=ready_spec,
            **common)(version_ready),
        post(model_path + "/infer", status_code=200, responses=infer_errors, middleware=gate,
             security=security, **common)(infer),
        post(version_path + "/infer", status_code=200, responses=infer_errors,
             middleware=gate, security=security, **common)(version_infer),
    ]
