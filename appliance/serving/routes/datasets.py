"""Data set versions held for suspect labels: an admin releases one (it trains) or discards
it (it never trains; its files are kept)."""

from litestar import post
from litestar.params import FromPath

from appliance.api_types import DatasetActionResponse
from appliance.serving.auth import admin_guard
from appliance.serving.context import Context
from appliance.serving.errors import ERRORS_ADMIN, ERRORS_HOST, error_spec
from appliance.serving.openapi import SECURITY_ADMIN
from appliance.serving.routes.shared import known_pipeline

_RESPONSES = {
    **ERRORS_HOST, **ERRORS_ADMIN,
    404: error_spec(404, "no such pipeline, or no such data set version"),
}


@post("/v1/pipelines/{name:str}/datasets/{version:int}/release", status_code=200,
      guards=[admin_guard], sync_to_thread=True, tags=["data"], security=SECURITY_ADMIN,
      responses={**_RESPONSES, 409: error_spec(409, "the data set version is not held or "
                                                    "discarded: it trains already")})
def release(name: FromPath[str], version: FromPath[int],
            context: Context) -> DatasetActionResponse:
    """Admin: let a held data set version (suspect labels) train, or one that was
    discarded. The new-data policy runs as if it had just arrived
    (`retrain.min_new_rows`)."""
    known_pipeline(context, name)
    return context.suspects.release(name, version)


@post("/v1/pipelines/{name:str}/datasets/{version:int}/discard", status_code=200,
      guards=[admin_guard], sync_to_thread=True, tags=["data"], security=SECURITY_ADMIN,
      responses={**_RESPONSES, 409: error_spec(409, "the data set version is not held")})
def discard(name: FromPath[str], version: FromPath[int],
            context: Context) -> DatasetActionResponse:
    """Admin: keep a held data set version out of training for good. Nothing is deleted:
    the original stays in archive/, the data set in datasets/, and a release lets it
    train after all."""
    known_pipeline(context, name)
    return context.suspects.discard(name, version)


ROUTES = [release, discard]
