"""Entities, sources, feature views and the model's feature service, built from
propensity.features (names and types are never typed here).

Offline sources are Parquet under PROPENSITY_FEATURES_URI, one folder per view: the session
views' rows come from the streaming job (a snapshot per event), the user and product views'
from the daily batch (a snapshot per entity and day on which its values change).
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, FeastType, Float64, Int64, String, UnixTimestamp

from propensity import features as F
from propensity.lake import archive_uri
from propensity.settings import Settings

FEAST_TYPES: dict[str, FeastType] = {
    "int64": Int64, "float64": Float64, "string": String, "bool": Bool,
    "timestamp": UnixTimestamp,
}

session = Entity(name="session", join_keys=[F.SESSION_ID], value_type=ValueType.STRING,
                 description="a shopping session (REES46 user_session)")
product = Entity(name="product", join_keys=[F.PRODUCT_ID], value_type=ValueType.INT64,
                 description="a catalogue product")
user = Entity(name="user", join_keys=[F.USER_ID], value_type=ValueType.INT64,
              description="a shopper")
ENTITIES = {e.name: e for e in (session, product, user)}


def _schema(specs: tuple[F.Feature, ...]) -> list[Field]:
    return [Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description)
            for f in specs]


def _source(settings: Settings, view: str, path: str | None = None) -> FileSource:
    return FileSource(name=f"{view}_archive", path=path or archive_uri(settings, view),
                      timestamp_field=F.EVENT_TIMESTAMP,
                      s3_endpoint_override=settings.aws_endpoint_url)


def build(settings: Settings, session_archive: str | None = None) -> list:
    """Every Feast object, for the given settings (paths, endpoint, session timeout).
    `session_archive` puts the session views' offline rows elsewhere (a folder holding one
    subfolder per view): training sets built from a file rather than from the stream."""
    def session_source(view: str) -> FileSource:
        path = f"{session_archive.rstrip('/')}/{view}" if session_archive else None
        return _source(settings, view, path)

    # A snapshot older than the session timeout belongs to an expired session.
    session_ttl = timedelta(seconds=settings.session_timeout_s)
    session_features = FeatureView(
        name=F.SESSION_VIEW, entities=[session], ttl=session_ttl,
        schema=_schema(F.SESSION_FEATURES), source=session_source(F.SESSION_VIEW),
        description="session behaviour as of each event, from the streaming job")
    session_product_features = FeatureView(
        name=F.SESSION_PRODUCT_VIEW, entities=[session, product], ttl=session_ttl,
        schema=_schema(F.SESSION_PRODUCT_FEATURES),
        source=session_source(F.SESSION_PRODUCT_VIEW),
        description="one product within a session, as of each event")
    # Batch rows are written only when values change, so the latest one stays valid however
    # old it is (windowed values get a row when an event leaves the window): no TTL.
    user_features = FeatureView(
        name=F.USER_VIEW, entities=[user], ttl=timedelta(0),
        schema=_schema(F.USER_FEATURES), source=_source(settings, F.USER_VIEW),
        description="the shopper's history as of the end of each day, from the daily batch")
    product_features = FeatureView(
        name=F.PRODUCT_VIEW, entities=[product], ttl=timedelta(0),
        schema=_schema(F.PRODUCT_FEATURES), source=_source(settings, F.PRODUCT_VIEW),
        description="the product's recent popularity and price, from the daily batch")
    model_service = FeatureService(
        name=F.MODEL_SERVICE,
        features=[session_features, session_product_features, user_features,
                  product_features],
        description="every feature the propensity model reads")
    return [session, product, user, session_features, session_product_features,
            user_features, product_features, model_service]


def feature_view(settings: Settings, name: str) -> FeatureView:
    (view,) = [o for o in build(settings) if isinstance(o, FeatureView) and o.name == name]
    return view


def join_keys(view: FeatureView) -> dict[str, ValueType]:
    """The view's join keys and their value types, in the entities' order."""
    return {ENTITIES[name].join_key: ENTITIES[name].value_type for name in view.entities}


# What `feast apply` registers, from the environment's settings.
(*_, session_features, session_product_features, user_features, product_features,
 model_service) = build(Settings())
