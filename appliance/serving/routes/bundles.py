"""Bundles: importing a model made elsewhere (admin). The body is the file itself: a
signed bundle from another box (``appliance bundle export``) or a bare LightGBM model
(``Booster.save_model``), bounded by ``bundles.max_bundle_mb``."""

from typing import Any

from litestar import post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import RequestBody
from litestar.params import FromPath, RawBody

from appliance.api_types import BundleImportResponse
from appliance.core import ApplianceError, Settings
from appliance.serving.auth import admin_guard
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_ADMIN, ERRORS_HOST, error_spec
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.routes.shared import known_pipeline

PATH = "/v1/pipelines/{name:str}/bundles"


def bundle_route(settings: Settings) -> HTTPRouteHandler:
    """The import route, its body bounded by ``bundles.max_bundle_mb`` (the app's own bound
    is for JSON requests)."""

    @post(PATH, status_code=200, guards=[admin_guard], sync_to_thread=True, tags=["models"],
          security=SECURITY_ADMIN,
          request_max_body_size=settings.bundles.max_bundle_mb << 20,
          responses={**ERRORS_HOST, **ERRORS_ADMIN,
                     404: error_spec(404, "no such pipeline"),
                     409: error_spec(409, "the policy promoted it but it could not be loaded; "
                                          "the serving model stays"),
                     413: error_spec(413, "the body is over bundles.max_bundle_mb"),
                     422: error_spec(422, "refused, with the reason (unsigned, bad signature, "
                                          "untrusted key, digest mismatch, unsafe or oversized "
                                          "member, features the pipeline can't feed, a model "
                                          "LightGBM can't read); nothing was registered"),
                     507: error_spec(507, "the state directory's disk is full; nothing was "
                                          "registered")})
    def import_bundle(name: FromPath[str], body: RawBody, context: Context) -> BundleImportResponse:
        """Admin: import a model bundle or a bare LightGBM model file into pipeline `name`.

        The body is the file's bytes (`Content-Type: application/octet-stream`). It is
        registered as a candidate with its foreign lineage, then the pipeline's promotion
        policy (`[pipelines.NAME.promotion] policy`) decides. A refusal registers nothing."""
        known_pipeline(context, name)
        importer = context.importer
        if importer is None:
            raise ApplianceError("not_available", "imports are not available", status=404)
        return importer.import_bytes(body, name, via="api")

    return import_bundle


def describe_body(spec: Any) -> None:
    """The route's body in the OpenAPI document: the file's bytes."""
    from litestar.openapi.spec import OpenAPIMediaType, Schema

    item = (spec.paths or {}).get("/v1/pipelines/{name}/bundles")
    if item is not None and item.post is not None:
        item.post.request_body = RequestBody(
            required=True, description="the bundle (.tar.gz) or LightGBM model text file",
            content={"application/octet-stream": OpenAPIMediaType(
                schema=Schema(type="string", format="binary"))})
