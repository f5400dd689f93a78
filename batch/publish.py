"""Publishing validated snapshots: the offline store (Parquet per as-of day, the Feast offline
source of the view) and the online store (each entity's latest snapshot, Feast's format and
writer), then the materialized interval recorded in Feast's registry, so that a later
`feast materialize-incremental` continues from there."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import FeatureStore

from propensity import aws, feature_repo
from propensity.batch.aggregates import DAY, day_number
from propensity.feature_repo import definitions, redis_layout
from propensity.feature_repo.online import write_latest
from propensity.lake import archive_uri, day_folder
from propensity.settings import Settings

SNAPSHOT_OBJECT = "snapshot.parquet"


def day_object(settings: Settings, view: str, day: date) -> str:
    """The one object holding a view's rows as of the end of `day` (rewritten by each run)."""
    return day_folder(aws.s3_key(archive_uri(settings, view)), day) + SNAPSHOT_OBJECT


def write_offline(settings: Settings, view: str, rows: pa.Table, days: list[date]) -> int:
    """One object per day of the run, empty when nothing changed that day, so that a rerun
    replaces exactly what an earlier run of those days wrote."""
    filesystem = aws.s3_filesystem(settings)
    day_numbers = rows.column(DAY)
    published = rows.drop_columns([DAY])
    for day in days:
        part = published.filter(pc.equal(day_numbers, day_number(day)))
        pq.write_table(part, day_object(settings, view, day), filesystem=filesystem)
    return rows.num_rows


def write_online(settings: Settings, store: FeatureStore, view: str, latest: pa.Table,
                 last_day: date) -> int:
    """Each entity's latest snapshot into Redis, with the batch TTL."""
    config = feature_repo.repo_config(settings, key_ttl_s=settings.batch_online_ttl_s)
    feature_view = definitions.feature_view(settings, view)
    written = write_latest(redis_layout.client(config.online_store), config, feature_view,
                           latest)
    registered = store.get_feature_view(view)
    end = datetime.combine(last_day + timedelta(days=1), time(), UTC)
    start = registered.most_recent_end_time or datetime(1970, 1, 1)
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    store.registry.apply_materialization(registered, store.project, min(start, end), end,
                                         commit=True)
    return written
