"""The prediction log: every answer the scorer gives, as Parquet on S3 partitioned by date,
written off the request path.

A request only appends its answers to a bounded in-memory queue (`PredictionLog.offer`: no
await, no I/O). When the queue is full the answer is dropped and counted, never waited for.
A background task (`run`) drains the queue every `flush_s`, or as soon as `batch_rows`
answers wait, and writes the batch from a thread (Parquet's encoding and the S3 put spend most
of their time outside the GIL). A batch whose write fails goes back to the queue's front and
is tried again at the next flush: an S3 outage delays the log, and only once the queue is
full are new answers dropped (counted). `close`, on the scorer's graceful stop, writes what is
queued.

The objects and their rows: propensity/predictions.py; `<instance>` in an object's name is
unique per scorer process, so instances never overwrite each other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge

from propensity import aws
from propensity.lake import day_folder
from propensity.predictions import LOG_SCHEMA, TIMESTAMP

log = logging.getLogger("propensity.serving.prediction_log")

# How long a graceful stop waits for the last writes.
CLOSE_TIMEOUT_S = 30.0
# Answers converted to Arrow at a time by the writer's thread (each conversion holds the GIL,
# which the event loop waits for: 500 take about 1 ms here).
CHUNK_ROWS = 500


class Prediction(NamedTuple):
    """One answer, as logged (a tuple: made on the request path, so it must be cheap)."""
    request_id: str
    answered_at: float  # epoch seconds (UTC)
    as_of: float
    session_id: str
    user_id: int | None
    product_id: int | None
    model_version: str
    variant: str
    propensity: float
    degraded: bool
    features: np.ndarray  # the model's row (any shape holding its values in column order)


ANSWERED_AT = Prediction._fields.index("answered_at")


def new_request_id() -> str:
    return uuid.uuid4().hex


def to_batch(predictions: Sequence[Prediction]) -> pa.RecordBatch:
    """The predictions as one Arrow record batch of LOG_SCHEMA."""
    (request_id, answered_at, as_of, session_id, user_id, product_id, model_version, variant,
     propensity, degraded, features) = (list(zip(*predictions, strict=True)) if predictions
                                        else [()] * len(LOG_SCHEMA))
    offsets = np.zeros(len(features) + 1, dtype=np.int32)
    np.cumsum([np.size(f) for f in features], out=offsets[1:])
    values = (np.concatenate(features, axis=None, dtype=np.float64) if features
              else np.zeros(0))
    return pa.RecordBatch.from_arrays([
        pa.array(request_id, pa.string()), _micros(answered_at), _micros(as_of),
        pa.array(session_id, pa.string()), pa.array(user_id, pa.int64()),
        pa.array(product_id, pa.int64()), pa.array(model_version, pa.string()),
        pa.array(variant, pa.string()), pa.array(np.asarray(propensity, dtype=np.float64)),
        pa.array(np.asarray(degraded, dtype=bool)),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
    ], schema=LOG_SCHEMA)


def _micros(seconds: Sequence[float]) -> pa.Array:
    micros = np.rint(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.array(micros).cast(TIMESTAMP)


def to_table(predictions: Sequence[Prediction], chunk_rows: int = CHUNK_ROWS) -> pa.Table:
    """The predictions as one Arrow table, converted `chunk_rows` at a time with the GIL let
    go in between: each conversion holds it, and the scorer's event loop waits for it."""
    batches = []
    for start in range(0, len(predictions), chunk_rows):
        batches.append(to_batch(predictions[start:start + chunk_rows]))
        time.sleep(0)
    return pa.Table.from_batches(batches, schema=LOG_SCHEMA)


def utc_day(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def by_date(predictions: Sequence[Prediction]) -> list[tuple[date, list[Prediction]]]:
    """Consecutive runs of the same answering date (UTC), in order."""
    return [(day, list(run)) for day, run in
            itertools.groupby(predictions, key=lambda p: utc_day(p[ANSWERED_AT]))]


def object_key(prefix: str, day: date, instance: str, seq: int) -> str:
    return f"{day_folder(prefix, day)}{instance}-{seq:08d}.parquet"


class LogMetrics:
    """The log's Prometheus metrics, in the scorer's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter("propensity_prediction_log_written_total",
                               "answers written to the prediction log", registry=registry)
        self.dropped = Counter("propensity_prediction_log_dropped_total",
                               "answers not logged because the log's queue was full",
                               registry=registry)
        self.failures = Counter("propensity_prediction_log_write_failures_total",
                                "writes of the prediction log that failed (tried again)",
                                registry=registry)
        self.queued = Gauge("propensity_prediction_log_queued",
                            "answers waiting to be written", registry=registry)


# put(key, body): stores one object (S3's put_object, or a test's fake).
Put = Callable[[str, bytes], None]


class PredictionLog:
    """The bounded queue and its background writer (see the module's docstring)."""

    def __init__(self, put: Put, prefix: str, metrics: LogMetrics, capacity: int,
                 batch_rows: int, flush_s: float) -> None:
        self.put = put
        self.prefix = prefix
        self.metrics = metrics
        self.capacity = capacity
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.instance = f"{uuid.uuid4().hex[:12]}-{os.getpid()}"
        self._queue: collections.deque[tuple] = collections.deque()
        self._seq = itertools.count()
        self._due = asyncio.Event()
        self._writing = asyncio.Lock()

    def offer(self, prediction: Prediction) -> bool:
        """Queue one answer; False (and counted) when the queue is full."""
        if len(self._queue) >= self.capacity:
            self.metrics.dropped.inc()
            return False
        # Kept as a plain tuple: the collector stops tracking a tuple of untracked values
        # (strings, numbers, arrays) at its first look, a NamedTuple never, and 20,000 of
        # those waiting would lengthen every full collection, a pause for every request.
        self._queue.append(tuple(prediction))
        if len(self._queue) >= self.batch_rows:
            self._due.set()
        return True

    async def run(self) -> None:
        """Drains the queue until cancelled. A flush under way when it is cancelled carries
        on (shielded) and `close`'s own flush waits for it: cancelled midway, the answers it
        had taken would be lost."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.flush_s)
            self._due.clear()
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Writes what is queued now, an object per date in batches of at most `batch_rows`;
        a batch whose write fails goes back to the queue's front with those after it."""
        async with self._writing:
            taken, self._queue = list(self._queue), collections.deque()
            done = 0
            try:
                for start in range(0, len(taken), self.batch_rows):
                    for day, rows in by_date(taken[start:start + self.batch_rows]):
                        await asyncio.to_thread(self._write, day, rows)
                        done += len(rows)
                        self.metrics.written.inc(len(rows))
            except Exception:
                self.metrics.failures.inc()
                log.exception("prediction log: %d answers not written yet; trying again at the "
                              "next flush", len(taken) - done)
                self._queue.extendleft(reversed(taken[done:]))
            self.metrics.queued.set(len(self._queue))

    def _write(self, day: date, rows: list[Prediction]) -> None:
        key = object_key(self.prefix, day, self.instance, next(self._seq))
        self.put(key, aws.parquet_bytes(to_table(rows)))

    async def close(self, runner: asyncio.Task | None) -> None:
        """Stops the background writer and writes what is queued (the graceful stop)."""
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), CLOSE_TIMEOUT_S)
        if self._queue:
            log.error("prediction log: %d answers not written at the stop", len(self._queue))
