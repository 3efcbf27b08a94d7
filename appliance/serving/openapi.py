"""The OpenAPI document (``/schema``): its config (title, version, the bearer scheme of
the admin and predict tokens), and what Litestar can't infer, written in once the routes
are registered (:func:`refine_openapi`)."""

import copy

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    RequestBody,
    Schema,
    SecurityScheme,
)

from appliance import __version__

BEARER = "bearer"
SECURITY_ADMIN = [{BEARER: []}]


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="appliance", version=__version__,
        components=Components(security_schemes={BEARER: SecurityScheme(
            type="http", scheme="bearer",
            description="the admin token from <state>/token (or, for predict with "
                        "server.predict_token_required, <state>/predict_token; for reads "
                        "when the API listens beyond loopback, <state>/read_token)",
        )}),
    )


def refine_openapi(app: Litestar, *, reads_need_token: bool = False) -> None:
    """Say in the schema what Litestar can't infer: the predict body takes no other field
    than ``rows`` (the Struct forbids unknown fields), a 503 from predict carries
    ``Retry-After``, and, when reads need a token (the read gate, in front of the routes),
    every operation it guards answers 401 and takes the bearer token. Call it after the
    last route is registered."""
    spec = app.openapi_schema
    if reads_need_token:
        _declare_read_gate(spec)
    schemas = spec.components.schemas if spec.components else None
    request_schema = (schemas or {}).get("PredictRequest")
    if isinstance(request_schema, Schema):
        request_schema.additional_properties = False
    _declare_protocol_bodies(spec)
    predict = (spec.paths or {}).get("/v1/pipelines/{name}/predict")
    if predict is not None and predict.post is not None and predict.post.responses:
        unavailable = predict.post.responses.get("503")
        if isinstance(unavailable, OpenAPIResponse):
            unavailable.headers = {"Retry-After": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.INTEGER),
                description="seconds to wait before asking again", required=True,
            )}


def _declare_read_gate(spec: OpenAPI) -> None:
    """401 and the bearer scheme on every operation behind the read gate (all but
    /health, /ready and predict, which declares its own)."""
    from appliance.serving.auth import OPEN_PATHS, OPEN_PREFIX

    for path, item in (spec.paths or {}).items():
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            op = getattr(item, method, None)
            if op is None or (method == "post" and path.endswith(
                    ("/predict", "/infer", "/invocations"))):
                continue
            responses = op.responses if op.responses is not None else {}
            if "401" not in responses:
                template = responses.get("400")
                unauthorized = copy.deepcopy(template) if isinstance(
                    template, OpenAPIResponse) else OpenAPIResponse(description="")
                unauthorized.description = ("missing or wrong bearer token: the API listens "
                                            "beyond loopback, so reads need <state>/read_token "
                                            "(or the predict or admin token)")
                responses["401"] = unauthorized
                op.responses = responses
            op.security = op.security or [{BEARER: []}]


def _obj(required: list[str] | None = None, **properties: Schema) -> Schema:
    return Schema(type=OpenAPIType.OBJECT, properties=properties or None,
                  required=required or None)


def _array(items: Schema | None = None) -> Schema:
    return Schema(type=OpenAPIType.ARRAY, items=items)


_STRING, _INTEGER = Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.INTEGER)

# The bodies of the protocols' prediction routes, which read their body themselves (the
# binary tensor extension, CSV): what their specifications say a body is.
INFER_BODY = _obj(
    ["inputs"], id=_STRING, parameters=_obj(),
    inputs=_array(_obj(["name", "shape", "datatype"], name=_STRING, shape=_array(_INTEGER),
                       datatype=_STRING, parameters=_obj(), data=_array())),
    outputs=_array(_obj(["name"], name=_STRING, parameters=_obj())),
)
INVOCATIONS_BODY = _obj(
    dataframe_split=_obj(["columns", "data"], columns=_array(_STRING), index=_array(),
                         data=_array(_array())),
    dataframe_records=_array(_obj()), instances=_array(_obj()), inputs=_obj(),
    params=_obj(),
)


def _declare_protocol_bodies(spec: OpenAPI) -> None:
    """The protocols' request bodies, and the Retry-After of their 503s."""
    for path, item in (spec.paths or {}).items():
        if path.startswith("/v2/models/") or path.endswith(("/invocations", "/ping")):
            for op in (item.get, item.post):
                unavailable = (op.responses or {}).get("503") if op is not None else None
                if isinstance(unavailable, OpenAPIResponse):
                    unavailable.headers = {"Retry-After": OpenAPIHeader(
                        schema=Schema(type=OpenAPIType.INTEGER),
                        description="seconds to wait before asking again", required=True)}
        op = item.post
        if op is None:
            continue
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            content = {"application/json": OpenAPIMediaType(schema=INFER_BODY)}
        elif path.endswith("/invocations"):
            content = {"application/json": OpenAPIMediaType(schema=INVOCATIONS_BODY),
                       "text/csv": OpenAPIMediaType(schema=_STRING)}
        else:
            continue
        op.request_body = RequestBody(content=content, required=True)
