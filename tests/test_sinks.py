"""The streaming sink's pieces that need no running stack."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from propensity import events
from propensity import features as F
from propensity.feature_repo import definitions
from propensity.settings import Settings
from tests.test_streaming import COSMETICS


def _snapshots() -> pd.DataFrame:
    valid = events.validate_file(COSMETICS).valid
    rng = np.random.default_rng(1)
    valid["device_type"] = np.where(rng.random(len(valid)) < 0.5, "mobile", None)
    return F.snapshots(valid)


def test_redis_writes_are_retried_until_redis_is_back(tmp_path) -> None:
    """A real redis-server killed before a write and started again 3 s later: the write
    waits for it instead of failing the batch, and lands whole. (redis-py's own retries,
    up to 14 s, are turned off here so that the outage needs the sink's.)"""
    import threading

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from propensity import feature_repo
    from propensity.feature_repo import redis_layout
    from propensity.feature_repo.online import write_latest
    from propensity.ops.testing import RedisProcess
    from propensity.streaming.destinations import retry_while_unavailable

    server = RedisProcess(tmp_path / "redis")
    server.start()
    settings = Settings().model_copy(update={"redis": server.connection_string})
    view = definitions.feature_view(settings, F.SESSION_VIEW)
    config = feature_repo.repo_config(settings, key_ttl_s=settings.online_ttl_s)
    client = redis_layout.client(config.online_store)
    snapshots = _snapshots()
    table = pa.Table.from_pandas(snapshots[list(F.SESSION_COLUMNS)], preserve_index=False)
    try:
        write_latest(client, config, view, table.slice(0, 10))  # the client is connected
        client.set_retry(Retry(NoBackoff(), 0))
        server.stop()
        restart = threading.Timer(3.0, server.start)
        restart.start()
        written = retry_while_unavailable(
            lambda: write_latest(client, config, view, table), 60, 7, view.name)
        restart.join()
        assert written.rows == snapshots[F.SESSION_ID].nunique()
        assert written.retries > 0
        stored = feature_repo.redis_client(settings).dbsize()
        assert stored == written.rows
    finally:
        server.stop()


def test_redis_writes_fail_the_batch_after_the_retry_budget() -> None:
    import redis

    from propensity.streaming.destinations import retry_while_unavailable

    clock = iter(range(100))
    calls = []

    def write() -> int:
        calls.append(1)
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        retry_while_unavailable(write, 5, 1, "view", sleep=lambda s: None,
                                clock=lambda: next(clock))
    assert len(calls) == 5  # the deadline is 0 + 5; failures seen at 1..4 retry, at 5 raise

    def broken() -> int:  # not an outage: a bug, failed at once
        calls.append(1)
        raise redis.ResponseError("WRONGTYPE")

    calls.clear()
    with pytest.raises(redis.ResponseError):
        retry_while_unavailable(broken, 5, 1, "view", sleep=lambda s: None)
    assert len(calls) == 1


def test_task_reports_join_into_the_batch_report() -> None:
    import pyarrow as pa

    from propensity.streaming.sinks import (
        TASK_REPORT_SCHEMA,
        BatchReport,
        join_reports,
        report_row,
        sample_evenly,
    )

    first = BatchReport(3, events=10, sessions=4, quarantined={"late": 2}, online_rows=6,
                        online_retries=1, write_s=0.5, tasks=1, freshness_s=[1.0, 2.0],
                        freshness_weights=[5.0, 5.0])
    second = BatchReport(3, events=1, sessions=1, quarantined={"late": 1, "malformed": 4},
                         online_rows=2, write_s=0.7, tasks=1, freshness_s=[9.0],
                         freshness_weights=[1.0])
    empty = BatchReport(3, tasks=1)
    rows = pa.Table.from_batches([report_row(r, p) for p, r in
                                  enumerate((first, second, empty))], schema=TASK_REPORT_SCHEMA)
    joined = join_reports(3, rows)
    assert (joined.events, joined.sessions, joined.online_rows, joined.online_retries,
            joined.tasks) == (11, 5, 8, 1, 3)
    assert joined.quarantined == {"late": 3, "malformed": 4}
    assert joined.write_s == 0.7  # the slowest task
    # Each value weighs the events it stands for: 5 at 1 s, 5 at 2 s, 1 at 9 s.
    assert joined.freshness_quantile(0.4) == 1.0
    assert joined.freshness_quantile(0.5) == 2.0
    assert joined.freshness_quantile(0.95) == 9.0
    assert BatchReport(1).freshness_quantile(0.5) is None

    values = np.arange(1000.0)[::-1]
    sample = sample_evenly(values, 64)
    assert len(sample) == 64 and sample[0] == 0.0 and sample[-1] == 999.0
    assert sample == sorted(sample)
    assert sample_evenly([3.0, 1.0], 64) == [1.0, 3.0]


def test_a_worker_freezes_its_heap_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first task only: later calls must not freeze a task's own garbage."""
    import gc

    from propensity import spark

    calls = []
    monkeypatch.setattr(spark, "_heap_frozen", False)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    for _ in range(3):
        spark.freeze_worker_heap()
    assert calls == [1]


def test_utc_times_equal_pandas_conversion_with_unknowns_as_nat() -> None:
    micros = [1_569_888_000_000_000, None, 1_569_888_000_000_001] * 40  # > pandas' cache size
    got = F.utc_times(micros)
    assert got.dtype == "datetime64[us, UTC]"
    pd.testing.assert_series_equal(
        got, pd.to_datetime(pd.Series(micros, dtype="Int64"), unit="us", utc=True))
    floats = pd.Series([1.569888e15, np.nan])  # a frame's column of times with gaps
    assert F.utc_times(floats).isna().tolist() == [False, True]
    assert F.utc_times(floats)[0] == pd.Timestamp("2019-10-01", tz="UTC")
    assert len(F.utc_times([])) == 0


def _payloads() -> tuple[pd.DataFrame, list[bytes]]:
    valid = events.validate_file(COSMETICS).valid
    return valid, events.to_json(valid)


def test_the_stages_without_spark_write_what_the_fold_gives_once() -> None:
    """The contract stage, the fold and the sink chained in memory (ops/testing.py): the lake
    holds every valid event once, the archive a snapshot per event equal to the fold over the
    file, the online views each entity's latest snapshot; a malformed event lands in the
    quarantine; a micro-batch written again leaves every destination as it was."""
    from propensity.ops.testing import StagesInMemory, kinesis_rows

    settings = Settings()
    valid, payloads = _payloads()
    thirds = np.array_split(np.arange(len(payloads)), 3)
    stages = StagesInMemory(settings)
    raws = [kinesis_rows([payloads[i] for i in part], 20, first_sequence=int(part[0]))
            for part in thirds]
    raws[1] = pa.concat_batches([raws[1], kinesis_rows([b'{"event_type": "view"'], 1,
                                                       first_sequence=10**9)])
    reports = [stages.run(raw, batch_id) for batch_id, raw in enumerate(raws)]
    to = stages.destinations

    lake = to.lake.table()  # the file repeats some events: each is there once
    assert sorted(lake.column("event_id").to_pylist()) == sorted(set(valid["event_id"]))
    assert sum(r.events for r in reports) == valid["event_id"].nunique()
    assert [r.quarantined for r in reports] == [{}, {"malformed": 1}, {}]
    assert to.quarantine.table().column(events.REASON).to_pylist() == ["malformed"]

    expected = F.snapshots(valid).set_index("event_id").sort_index()
    archived = to.archive[F.SESSION_VIEW].table().to_pandas().set_index("event_id")
    archived = archived.sort_index()
    assert list(archived.index) == list(expected.index)
    for name in ("event_count", "view_count", "add_to_cart_count"):
        assert archived[name].tolist() == expected[name].tolist(), name

    last = expected.sort_values(F.EVENT_TIMESTAMP, kind="stable").groupby(F.SESSION_ID).tail(1)
    online = to.online[F.SESSION_VIEW].rows
    assert len(online) == last[F.SESSION_ID].nunique()
    for row in last.itertuples():
        assert online[(row.session_id,)]["event_count"] == row.event_count

    before = ({k: v.num_rows for k, v in to.lake.objects.items()},
              dict(to.online[F.SESSION_VIEW].rows))
    stages.writer.write(stages.last_output, 2)  # the last batch again, as after a crash
    assert ({k: v.num_rows for k, v in to.lake.objects.items()},
            dict(to.online[F.SESSION_VIEW].rows)) == before
