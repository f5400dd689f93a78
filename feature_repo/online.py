"""Writing feature rows to the online store (Redis) in Feast's format: shared by the streaming
job (session views) and the daily batch (user and product views).

The bytes are Feast's: Redis keys and hash fields in its published layout (redis_layout.py),
values as Feast's type map converts them, timestamps as protobuf Timestamps. What
is ours is the loop around them: each distinct value of a column is converted and serialized
once, and a chunk's rows go out in two pipelined round trips (the stored timestamps, then the
newer rows), as in Feast's `online_write_batch`, which spends most of its time per row and per
feature (profiled: 41% of the streaming job's Python time). tests/test_online_writes.py
checks, on a real redis-server, that Redis holds byte for byte what Feast's writer leaves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView, ValueType
from feast.type_map import python_values_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp

from propensity import features as F
from propensity.feature_repo import definitions, redis_layout


def _distinct_serialized(values: np.ndarray, value_type: ValueType) -> list[bytes]:
    """Each value's serialized ValueProto, converted and serialized once per distinct value."""
    codes, converted = _distinct_converted(values, value_type)
    serialized = {code: proto.SerializeToString() for code, proto in converted.items()}
    return [serialized[code] for code in codes.tolist()]


def _distinct_converted(values: np.ndarray, value_type: ValueType) -> tuple[np.ndarray, dict]:
    """(a code per value, {code: Feast's ValueProto of that value}); nulls (None, NaN, NaT)
    share code -1."""
    codes = pd.factorize(values)[0]
    distinct, first = np.unique(codes, return_index=True)
    converted = python_values_to_proto_values(values[first], value_type)
    return codes, dict(zip(distinct.tolist(), converted, strict=True))


def latest_per_entity(table: pa.Table, keys: list[str]) -> pa.Table:
    """The row with the latest snapshot time for each entity key."""
    frame = table.select([*keys, F.EVENT_TIMESTAMP]).to_pandas()
    frame["_row"] = np.arange(len(frame))
    latest = frame.sort_values(F.EVENT_TIMESTAMP, kind="stable").drop_duplicates(keys, keep="last")
    return table.take(pa.array(np.sort(latest["_row"].to_numpy())))


def write_latest(client: Any, repo_config: Any, view: FeatureView, table: pa.Table,
                 chunk_rows: int = 50_000) -> int:
    """Write the latest row per entity of `table` (join keys, features, event_timestamp, any
    other columns ignored) to Redis through `client` (redis_layout.client; keep one per
    process, it holds the connection). As Feast does, an entity whose stored row is as new or
    newer is left alone, so this is idempotent. Returns the rows written or found newer."""
    join_keys = definitions.join_keys(view)
    latest = latest_per_entity(table, list(join_keys))
    for start in range(0, latest.num_rows, chunk_rows):
        _write_rows(client, repo_config, view, join_keys, latest.slice(start, chunk_rows))
    return latest.num_rows


def _write_rows(client: Any, repo_config: Any, view: FeatureView,
                join_keys: dict[str, ValueType], table: pa.Table) -> None:
    """One chunk of rows, one per entity: read the stored timestamps, then write the rows that
    are newer (HSET of every feature and the timestamp; EXPIRE when the store has a TTL)."""
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None:
        return
    _, fields = redis_layout.view_fields(view)
    feature_fields, timestamp_field = fields[:-1], fields[-1]
    values = [_distinct_serialized(batch.column(f.name).to_numpy(zero_copy_only=False),
                                   f.dtype.to_value_type()) for f in view.features]
    redis_layout.require_version(repo_config)
    keys = redis_layout.entity_keys(batch, join_keys, repo_config.project)
    micros = pc.cast(batch.column(view.batch_source.timestamp_field),
                     pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, timestamp_field)
        stored = [_nanos(found[0]) for found in pipe.execute()]
    ttl = repo_config.online_store.key_ttl_seconds
    with client.pipeline(transaction=False) as pipe:
        for row, (key, before) in enumerate(zip(keys, stored, strict=True)):
            at = int(micros[row])
            if before is not None and at * 1000 <= before:
                continue  # Redis already holds this instant or a later one
            stamp = Timestamp(seconds=at // 1_000_000, nanos=at % 1_000_000 * 1000)
            mapping = {field: column[row] for field, column in
                       zip(feature_fields, values, strict=True)}
            mapping[timestamp_field] = stamp.SerializeToString()
            pipe.hset(key, mapping=mapping)
            if ttl:
                pipe.expire(name=key, time=ttl)
        pipe.execute()


def _nanos(stored: bytes | None) -> int | None:
    """A stored `_ts:<view>` field as nanoseconds since the epoch."""
    if not stored:
        return None
    stamp = Timestamp.FromString(stored)
    return stamp.seconds * 1_000_000_000 + stamp.nanos
