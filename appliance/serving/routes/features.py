"""The feature store's routes: ``/v1/feature-sets``, one set, and one entity's online
values."""

from litestar import get
from litestar.openapi import ResponseSpec
from litestar.params import FromPath

from appliance.api_types import ErrorBody, FeatureSetInfo, FeatureSetList, OnlineFeatures
from appliance.core import ApplianceError
from appliance.serving.context import Context, ServingContext

HOST = {400: ResponseSpec(data_container=ErrorBody, description="the Host header is not this "
                          "appliance's address or a name in server.allowed_hosts")}
NOT_FOUND = {**HOST, 404: ResponseSpec(data_container=ErrorBody,
                                       description="no such feature set or key")}


def known_feature_set(context: ServingContext, name: str) -> None:
    if name not in context.settings.feature_sets:
        raise ApplianceError(
            "unknown_feature_set",
            f"no feature set `{name}`; declare it in appliance.toml as "
            f'[feature_sets.{name}] key = "..."', {"feature_set": name}, status=404,
        )


def feature_set_info(context: ServingContext, name: str) -> FeatureSetInfo:
    store, settings = context.store, context.settings
    fs = settings.feature_sets[name]
    record = store.pipeline(name)
    datasets, rows, _ = store.dataset_totals(name)
    online = store.online_summary(name)
    return FeatureSetInfo(
        name=name, key=fs.key, timestamp=fs.timestamp,
        schema=record.schema if record else None, datasets=datasets,
        rows=rows, keys=online["keys"],
        updated_at=online["updated_at"], newest_event=online["newest_event"],
        last_ingestion=store.last_ingestion_at(name),
        used_by=sorted(p for p, cfg in settings.pipelines.items() if name in cfg.join),
    )


@get("/v1/feature-sets", sync_to_thread=True, tags=["features"], responses=HOST)
def feature_sets(context: Context) -> FeatureSetList:
    """Every declared feature set with its schema, size and freshness."""
    return FeatureSetList(feature_sets=[feature_set_info(context, n)
                                        for n in sorted(context.settings.feature_sets)])


@get("/v1/feature-sets/{name:str}", sync_to_thread=True, tags=["features"],
     responses=NOT_FOUND)
def feature_set(name: FromPath[str], context: Context) -> FeatureSetInfo:
    """One feature set: schema, rows, keys in the online store, freshness."""
    known_feature_set(context, name)
    return feature_set_info(context, name)


@get("/v1/feature-sets/{name:str}/{key:str}", sync_to_thread=True, tags=["features"],
     responses=NOT_FOUND)
def online_values(name: FromPath[str], key: FromPath[str], context: Context) -> OnlineFeatures:
    """The online store's latest values of one entity."""
    known_feature_set(context, name)
    found = context.store.online_feature(name, key)
    if found is None:
        raise ApplianceError(
            "unknown_entity", f"feature set `{name}` has no values for key `{key}`",
            {"feature_set": name, "key": key}, status=404,
        )
    return OnlineFeatures(feature_set=name, key=key, **found)


ROUTES = [feature_sets, feature_set, online_values]
