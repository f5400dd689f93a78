"""feature_repo.online writes Feast's Redis layout itself: on a real redis-server, what it
leaves is byte for byte what Feast's own `online_write_batch` leaves for the same rows (keys,
hash fields, values, timestamps, TTLs), for every view the project writes; and it skips rows
that are not newer than the stored ones, as Feast does. Fails loudly if Feast's layout moves."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import ValueType
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.utils import _convert_arrow_to_proto

from propensity import events, feature_repo
from propensity import features as F
from propensity.feature_repo import definitions
from propensity.feature_repo.online import latest_per_entity, write_latest
from propensity.ops.testing import RedisProcess
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def _tables() -> dict[str, pa.Table]:
    """The session views' rows of the bundled sample, as the streaming sink has them, and the
    daily batch's views with values of every type they hold (nulls among them)."""
    valid = events.validate_file(MULTICAT_SAMPLE).valid
    snapshots = F.snapshots(valid)
    tables = {view: pa.Table.from_pandas(snapshots[list(columns)], preserve_index=False)
              for view, columns in F.ARCHIVE_COLUMNS.items()}
    for view_name in (F.USER_VIEW, F.PRODUCT_VIEW):
        tables[view_name] = _generated(definitions.feature_view(Settings(), view_name))
    return tables


def _generated(view, rows: int = 500) -> pa.Table:
    rng = np.random.default_rng(7)
    now = pd.Timestamp("2019-10-01", tz="UTC")
    times = now + pd.to_timedelta(rng.integers(0, 86_400_000_000, rows), unit="us")
    by_type = {
        ValueType.INT64: lambda: pa.array(rng.integers(0, 5, rows), pa.int64()),
        ValueType.DOUBLE: lambda: pa.array(np.where(rng.random(rows) < 0.2, np.nan,
                                                    rng.random(rows).round(2))),
        ValueType.STRING: lambda: pa.array([None if x < 0.3 else f"c{int(x * 5)}"
                                            for x in rng.random(rows)], pa.string()),
        ValueType.UNIX_TIMESTAMP: lambda: pa.array(times, pa.timestamp("us", tz="UTC")),
    }
    columns = {key: pa.array(rng.permutation(rows) + 1, pa.int64())
               for key in definitions.join_keys(view)}
    columns.update({f.name: by_type[f.dtype.to_value_type()]() for f in view.features})
    columns[F.EVENT_TIMESTAMP] = pa.array(times, pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def _everything(client) -> dict:
    return {key: (client.hgetall(key), client.ttl(key) > 0) for key in client.keys("*")}


@pytest.mark.parametrize("ttl_s", [None, 3600])
def test_redis_holds_what_feasts_writer_leaves(redis_server: RedisProcess, ttl_s: int | None
                                               ) -> None:
    settings = Settings().model_copy(update={"redis": redis_server.connection_string})
    config = feature_repo.repo_config(settings, key_ttl_s=ttl_s)
    client = feature_repo.redis_client(settings)
    for view_name, table in _tables().items():
        view = definitions.feature_view(settings, view_name)
        join_keys = definitions.join_keys(view)
        client.flushall()
        feasts = RedisOnlineStore()
        latest = latest_per_entity(table, list(join_keys))
        feasts.online_write_batch(config, view,
                                  _convert_arrow_to_proto(latest, view, join_keys), None)
        expected = _everything(client)
        client.flushall()
        written = write_latest(client, config, view, table)
        assert written == latest.num_rows == len(expected) > 100
        assert _everything(client) == expected, view_name


def test_only_newer_rows_replace_stored_ones(redis_server: RedisProcess) -> None:
    settings = Settings().model_copy(update={"redis": redis_server.connection_string})
    config = feature_repo.repo_config(settings)
    client = feature_repo.redis_client(settings)
    client.flushall()
    view = definitions.feature_view(settings, F.SESSION_VIEW)
    table = _tables()[F.SESSION_VIEW]
    store = RedisOnlineStore()  # Feast's public reader
    write_latest(client, config, view, table)
    before = _everything(client)
    frame = latest_per_entity(table, [F.SESSION_ID]).to_pandas()
    frame["event_count"] = frame["event_count"] + 1000
    older = frame.assign(event_timestamp=frame[F.EVENT_TIMESTAMP] - timedelta(seconds=1))
    same = frame
    for rows in (older, same):
        write_latest(client, config, view, pa.Table.from_pandas(rows, preserve_index=False))
        assert _everything(client) == before
    newer = frame.iloc[:5].assign(
        event_timestamp=frame[F.EVENT_TIMESTAMP].iloc[:5] + timedelta(microseconds=1))
    write_latest(client, config, view, pa.Table.from_pandas(newer, preserve_index=False))
    found = store.online_read(config, view, [
        _key(s) for s in newer[F.SESSION_ID]], ["event_count"])
    assert [values["event_count"].int64_val for _, values in found] == list(
        newer["event_count"])
    assert [ts for ts, _ in found] == [t.to_pydatetime() for t in pd.to_datetime(
        newer[F.EVENT_TIMESTAMP])]


def _key(session_id: str):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[F.SESSION_ID], entity_values=[Value(string_val=session_id)])


