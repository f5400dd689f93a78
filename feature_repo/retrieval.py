"""Point-in-time retrieval through Feast's offline store (dask), one feature view at a time.

Feast 0.67's dask store has two defects that lose training rows silently, so every call goes
through `historical_features`:
- an entity row whose feature rows all lie after its timestamp (a user whose first snapshot
  is later) disappears from the result, with its features from every other view;
- entity rows sharing join keys and timestamp collapse into one (feast-dev/feast#6787).
Retrieving each view for the distinct (join keys, timestamp) pairs and merging the result
back onto every row keeps them all, with nulls where a view has nothing as of that time.
Also, with more than one partition dask cannot sort a joined frame that holds a null
timestamp (an entity without any row), so each source is read as one partition, and through
propensity/lake.py, so that a compacted day is read once (the one touch of Feast's internals,
in feast_internals.py).
"""

from __future__ import annotations

import pandas as pd
from feast import FeatureStore

from propensity import features as F
from propensity.feature_repo import aws_environment
from propensity.feature_repo.definitions import join_keys
from propensity.feature_repo.feast_internals import lake_reader
from propensity.settings import Settings


def historical_features(store: FeatureStore, settings: Settings, points: pd.DataFrame,
                        views: list[str] | None = None) -> pd.DataFrame:
    """`points` (`event_timestamp` and the join keys of the views) with every feature of the
    views (default: those of the model's feature service) as of each point's timestamp,
    inclusive; row order kept. `settings` give the S3 credentials of the offline sources."""
    result = points.copy()
    result[F.EVENT_TIMESTAMP] = _utc_ns(result[F.EVENT_TIMESTAMP])
    if views is None:
        service = store.get_feature_service(F.MODEL_SERVICE)
        views = [projection.name for projection in service.feature_view_projections]
    with lake_reader(settings), aws_environment(settings):
        for name in views:
            view = store.get_feature_view(name)
            keys = [*join_keys(view), F.EVENT_TIMESTAMP]
            entities = result[keys].dropna().drop_duplicates().reset_index(drop=True)
            names = [feature.name for feature in view.features]
            if entities.empty:
                found = pd.DataFrame(columns=[*keys, *names])
            else:
                found = store.get_historical_features(
                    entity_df=entities, features=[f"{view.name}:{name}" for name in names],
                ).to_df()[[*keys, *names]]
            found[F.EVENT_TIMESTAMP] = _utc_ns(found[F.EVENT_TIMESTAMP])
            result = result.merge(found, on=keys, how="left", validate="many_to_one")
    return result


def _utc_ns(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")
