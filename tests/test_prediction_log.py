"""The scorer's prediction log: the queue and its writer with an in-memory store, then the
scorer as a real process writing to moto's S3 (every answer once; none past a full queue,
counted; what is queued written at a graceful stop)."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from propensity import model_store
from propensity.lake import read_table
from propensity.ops.demo import register_shipped_model
from propensity.ops.testing import (
    isolated,
    load_session_features,
    running_scorer,
    session_requests,
)
from propensity.predictions import LOG_SCHEMA
from propensity.rollout import CHAMPION
from propensity.samples import MULTICAT_SAMPLE
from propensity.serving.prediction_log import (
    LogMetrics,
    Prediction,
    PredictionLog,
    new_request_id,
    to_table,
)
from propensity.settings import Settings

DAY = datetime(2026, 12, 6, 23, 59, 58, tzinfo=UTC)


def prediction(i: int, at: datetime = DAY) -> Prediction:
    return Prediction(new_request_id(), at.timestamp(), (at - timedelta(seconds=i)).timestamp(),
                      f"s{i}", i or None, 7, "v1", CHAMPION, i / 1000, i % 2 == 0,
                      np.array([[i, np.nan, 0.5]]))


class Store:
    """An in-memory S3: key -> body; fails the next `fail` puts."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = 0

    def put(self, key: str, body: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("S3 is away")
        assert key not in self.objects
        self.objects[key] = body

    def rows(self) -> list[dict]:
        return [row for body in self.objects.values()
                for row in pq.read_table(io.BytesIO(body)).to_pylist()]


def new_log(store: Store, capacity: int = 1000, batch_rows: int = 100,
            flush_s: float = 3600) -> PredictionLog:
    return PredictionLog(store.put, "log", LogMetrics(CollectorRegistry()), capacity,
                         batch_rows, flush_s)


def counted(log: PredictionLog, name: str) -> float:
    """A counter of the log's metrics, through prometheus_client's public collect()."""
    (family,) = getattr(log.metrics, name).collect()
    return next(s.value for s in family.samples if s.name.endswith("_total"))


def test_every_answer_is_written_once_in_an_object_per_date() -> None:
    store = Store()
    log = new_log(store, batch_rows=4)
    sent = [prediction(i, DAY + timedelta(seconds=i)) for i in range(10)]  # 2 across midnight
    assert all(log.offer(p) for p in sent)
    asyncio.run(log.flush())
    rows = store.rows()
    assert sorted(r["request_id"] for r in rows) == sorted(p.request_id for p in sent)
    days = {key.split("/")[1] for key in store.objects}
    assert days == {"date=2026-12-06", "date=2026-12-07"}
    first = next(r for r in rows if r["request_id"] == sent[3].request_id)
    assert first["session_id"] == "s3" and first["user_id"] == 3 and first["degraded"] is False
    assert first["as_of"] == DAY and first["answered_at"] == DAY + timedelta(seconds=3)
    assert first["features"][0] == 3 and np.isnan(first["features"][1])
    assert next(r for r in rows if r["session_id"] == "s0")["user_id"] is None
    assert pq.read_table(io.BytesIO(next(iter(store.objects.values())))).schema.equals(
        LOG_SCHEMA)
    assert counted(log, "written") == 10


def test_a_full_queue_drops_and_counts_and_never_waits() -> None:
    store = Store()
    log = new_log(store, capacity=5)
    accepted = [log.offer(prediction(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert counted(log, "dropped") == 3
    asyncio.run(log.flush())
    assert len(store.rows()) == 5


def test_a_failed_write_is_tried_again_and_nothing_is_doubled() -> None:
    store = Store()
    log = new_log(store, batch_rows=3)
    sent = [prediction(i) for i in range(7)]
    for p in sent:
        log.offer(p)
    store.fail = 1

    async def two_flushes() -> None:
        await log.flush()  # the first batch fails: all 7 wait again
        assert len(store.rows()) == 0 and counted(log, "failures") == 1
        await log.flush()

    asyncio.run(two_flushes())
    assert sorted(r["request_id"] for r in store.rows()) == sorted(p.request_id for p in sent)


def test_a_batch_of_rows_is_written_at_once_and_close_writes_the_rest() -> None:
    store = Store()
    log = new_log(store, batch_rows=5, flush_s=3600)

    async def serve() -> None:
        writer = asyncio.create_task(log.run())
        for i in range(7):
            log.offer(prediction(i))
        for _ in range(100):  # the 5th answer woke the writer: no 3600 s wait
            await asyncio.sleep(0.01)
            if store.objects:
                break
        assert len(store.rows()) >= 5
        await log.close(writer)

    asyncio.run(serve())
    assert len(store.rows()) == 7


@pytest.mark.integration
@pytest.mark.parametrize("queue", [100_000, 50])
def test_the_scorer_logs_every_answer_it_gives(stack: Settings, tmp_path, queue: int) -> None:
    """Real scorer, Redis and moto: 150 answers; with a queue of 50 and no flush during the
    run, the first 50 are logged (at the graceful stop) and 100 counted as dropped."""
    settings = isolated(stack, tmp_path).model_copy(update={
        "serving_deadline_ms": 10_000, "prediction_log_queue": queue,
        "prediction_log_flush_s": 0.5 if queue > 50 else 3600})
    load_session_features(settings, MULTICAT_SAMPLE)
    version = register_shipped_model(settings)
    requests = session_requests(MULTICAT_SAMPLE)[:150]
    with running_scorer(settings) as url:
        answers = [answer for start in range(0, 150, 100) for answer in httpx.post(
            f"{url}/v1/propensity/batch", json={"requests": requests[start:start + 100]},
            timeout=30).json()["results"]]
        dropped = next(float(line.split()[1]) for line in httpx.get(
            f"{url}/metrics").text.splitlines()
            if line.startswith("propensity_prediction_log_dropped_total "))
    logged = read_table(settings, settings.predictions_uri).to_pylist()
    kept = answers if queue > 50 else answers[:50]
    assert dropped == len(answers) - len(kept)
    assert sorted(r["request_id"] for r in logged) == sorted(a["request_id"] for a in kept)
    by_id = {r["request_id"]: r for r in logged}
    columns = model_store.load(settings, version).columns
    for answer, request in zip(kept, requests, strict=False):
        row = by_id[answer["request_id"]]
        assert row["session_id"] == request["session_id"] == answer["session_id"]
        assert row["user_id"] == request["user_id"]
        assert row["product_id"] == request["product_id"]
        assert row["propensity"] == answer["propensity"]
        assert row["model_version"] == version and row["variant"] == CHAMPION
        assert row["degraded"] is False
        assert str(row["date"]) == row["answered_at"].date().isoformat()
        assert len(row["features"]) == len(columns)


def test_the_table_is_the_same_whatever_the_chunks() -> None:
    sent = [tuple(prediction(i)) for i in range(7)]  # as queued: plain tuples
    whole, chunked = to_table(sent, chunk_rows=100), to_table(sent, chunk_rows=2)
    assert whole.num_rows == 7 and chunked.schema.equals(whole.schema)
    assert chunked.drop(["features"]).equals(whole.drop(["features"]))
    values = [t["features"].combine_chunks().flatten() for t in (chunked, whole)]
    np.testing.assert_array_equal(*values)  # NaN where NaN
    assert to_table([]).num_rows == 0


def test_a_stop_during_a_slow_write_loses_nothing() -> None:
    store = Store()
    slow = store.put

    def put(key: str, body: bytes) -> None:
        time.sleep(0.2)
        slow(key, body)

    log = PredictionLog(put, "log", LogMetrics(CollectorRegistry()), 1000, 3, 3600)
    sent = [prediction(i) for i in range(7)]

    async def serve() -> None:
        writer = asyncio.create_task(log.run())
        for p in sent:
            log.offer(p)
        await asyncio.sleep(0.05)  # the writer is in its first (slow) write
        log.offer(more := prediction(8))
        sent.append(more)
        await log.close(writer)

    asyncio.run(serve())
    assert sorted(r["request_id"] for r in store.rows()) == sorted(p.request_id for p in sent)
