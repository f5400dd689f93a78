"""The streaming sink's pieces that need no running stack."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast.utils import _convert_arrow_to_proto

from feature_repo import definitions
from feature_repo.online import online_rows
from propensity import events
from propensity import features as F
from propensity.settings import Settings
from streaming.sinks import SESSION_COLUMNS, SESSION_PRODUCT_COLUMNS
from tests.test_streaming import COSMETICS


def _snapshots() -> pd.DataFrame:
    valid = events.validate_file(COSMETICS).valid
    rng = np.random.default_rng(1)
    valid["device_type"] = np.where(rng.random(len(valid)) < 0.5, "mobile", None)
    return F.snapshots(valid)


def test_online_rows_are_byte_identical_to_feasts_own_conversion() -> None:
    snapshots = _snapshots()
    settings = Settings()
    for view_name, columns, join_keys in (
            (F.SESSION_VIEW, SESSION_COLUMNS, {F.SESSION_ID: "STRING"}),
            (F.SESSION_PRODUCT_VIEW, SESSION_PRODUCT_COLUMNS,
             {F.SESSION_ID: "STRING", F.PRODUCT_ID: "INT64"})):
        from feast import ValueType

        keys = {k: ValueType[v] for k, v in join_keys.items()}
        view = definitions.feature_view(settings, view_name)
        table = pa.Table.from_pandas(snapshots[list(columns)], preserve_index=False)
        ours = online_rows(table, view, keys)
        feasts = _convert_arrow_to_proto(table, view, keys)
        assert len(ours) == len(feasts) == len(snapshots)
        for (key, values, ts, created), (key2, values2, ts2, created2) in zip(
                ours, feasts, strict=True):
            assert key.SerializeToString() == key2.SerializeToString()
            assert {n: v.SerializeToString() for n, v in values.items()} == {
                n: v.SerializeToString() for n, v in values2.items()}
            assert (ts, created) == (ts2, created2)


def test_redis_writes_are_retried_until_redis_is_back(tmp_path) -> None:
    """A real redis-server killed before a write and started again 3 s later: the write
    waits for it instead of failing the batch, and lands whole. (redis-py's own retries,
    up to 14 s, are turned off here so that the outage needs the sink's.)"""
    import threading

    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    import feature_repo
    from feature_repo.online import write_latest
    from propensity.testing import RedisProcess
    from streaming.sinks import BatchReport, retry_while_unavailable

    server = RedisProcess(tmp_path / "redis")
    server.start()
    settings = Settings().model_copy(update={"redis": server.connection_string})
    view = definitions.feature_view(settings, F.SESSION_VIEW)
    config = feature_repo.repo_config(settings, key_ttl_s=settings.online_ttl_s)
    store = RedisOnlineStore()
    snapshots = _snapshots()
    table = pa.Table.from_pandas(snapshots[list(SESSION_COLUMNS)], preserve_index=False)
    try:
        write_latest(store, config, view, table.slice(0, 10))  # the store is connected
        store._get_client(config.online_store).set_retry(Retry(NoBackoff(), 0))
        server.stop()
        restart = threading.Timer(3.0, server.start)
        restart.start()
        report = BatchReport(batch_id=7)
        written = retry_while_unavailable(
            lambda: write_latest(store, config, view, table), 60, report, view.name)
        restart.join()
        assert written == snapshots[F.SESSION_ID].nunique()
        assert report.online_retries > 0
        stored = feature_repo.redis_client(settings).dbsize()
        assert stored == written
    finally:
        server.stop()


def test_redis_writes_fail_the_batch_after_the_retry_budget() -> None:
    import redis

    from streaming.sinks import BatchReport, retry_while_unavailable

    clock = iter(range(100))
    calls = []

    def write() -> int:
        calls.append(1)
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        retry_while_unavailable(write, 5, BatchReport(1), "view", sleep=lambda s: None,
                                clock=lambda: next(clock))
    assert len(calls) == 5  # the deadline is 0 + 5; failures seen at 1..4 retry, at 5 raise

    def broken() -> int:  # not an outage: a bug, failed at once
        calls.append(1)
        raise redis.ResponseError("WRONGTYPE")

    calls.clear()
    with pytest.raises(redis.ResponseError):
        retry_while_unavailable(broken, 5, BatchReport(1), "view", sleep=lambda s: None)
    assert len(calls) == 1
