"""Entities, sources and feature views, built from propensity.features (names and types are
never typed here). The session views' offline source is the streaming job's feature archive.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, FeastType, Float64, Int64, String, UnixTimestamp

from propensity import features as F
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


def _schema(specs: tuple[F.Feature, ...]) -> list[Field]:
    return [Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description)
            for f in specs]


def archive_path(settings: Settings, view: str) -> str:
    """Where the feature archive keeps one view's snapshots (Parquet, partitioned by date)."""
    return f"{settings.features_uri.rstrip('/')}/{view}"


def _source(settings: Settings, view: str) -> FileSource:
    return FileSource(name=f"{view}_archive", path=archive_path(settings, view),
                      timestamp_field=F.EVENT_TIMESTAMP,
                      s3_endpoint_override=settings.aws_endpoint_url)


def build(settings: Settings) -> list:
    """Every Feast object, for the given settings (paths, endpoint, session timeout)."""
    # A snapshot older than the session timeout belongs to an expired session.
    session_ttl = timedelta(seconds=settings.session_timeout_s)
    session_features = FeatureView(
        name=F.SESSION_VIEW, entities=[session], ttl=session_ttl,
        schema=_schema(F.SESSION_FEATURES), source=_source(settings, F.SESSION_VIEW),
        description="session behaviour as of each event, from the streaming job")
    session_product_features = FeatureView(
        name=F.SESSION_PRODUCT_VIEW, entities=[session, product], ttl=session_ttl,
        schema=_schema(F.SESSION_PRODUCT_FEATURES),
        source=_source(settings, F.SESSION_PRODUCT_VIEW),
        description="one product within a session, as of each event")
    return [session, product, user, session_features, session_product_features]


def feature_view(settings: Settings, name: str) -> FeatureView:
    (view,) = [o for o in build(settings) if isinstance(o, FeatureView) and o.name == name]
    return view


# What `feast apply` registers, from the environment's settings.
*_, session_features, session_product_features = build(Settings())
