"""The OpenAPI document (``/schema``): its config (title, version, the bearer scheme of
the admin and predict tokens), and what Litestar can't infer, written in once the routes
are registered (:func:`refine_openapi`)."""

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
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
                        "server.predict_token_required, <state>/predict_token)",
        )}),
    )


def refine_openapi(app: Litestar) -> None:
    """Say in the schema what Litestar can't infer: the predict body takes no other field
    than ``rows`` (the Struct forbids unknown fields), and a 503 from predict carries
    ``Retry-After``. Call it after the last route is registered."""
    spec = app.openapi_schema
    schemas = spec.components.schemas if spec.components else None
    request_schema = (schemas or {}).get("PredictRequest")
    if isinstance(request_schema, Schema):
        request_schema.additional_properties = False
    predict = (spec.paths or {}).get("/v1/pipelines/{name}/predict")
    if predict is not None and predict.post is not None and predict.post.responses:
        unavailable = predict.post.responses.get("503")
        if isinstance(unavailable, OpenAPIResponse):
            unavailable.headers = {"Retry-After": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.INTEGER),
                description="seconds to wait before asking again", required=True,
            )}
