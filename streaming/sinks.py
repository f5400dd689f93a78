"""Where one micro-batch goes, written by the tasks that hold its rows: no row passes through
the driver. The stateful step's output is grouped by session bucket, so every entity of the
session views (a session, a session and product) lives in exactly one partition, and each
task decides its entities' latest rows itself. Each task writes its own partition's rows to
the destinations (destinations.py, each behind `write(table, part)`):

- the event lake: valid, de-duplicated events as Parquet,
  `<events>/date=D/batch-<query>-<batch>-<partition>.parquet`;
- the feature archive (Feast's offline source): one snapshot per event and view,
  `<features>/<view>/date=D/batch-...parquet`;
- the quarantine: invalid and late events with payload and reason, by arrival date;
- the online store: Redis rows in Feast's layout, only the latest snapshot per entity, left
  alone when Redis already holds that instant or later. While Redis is away (a restart, a
  failover) the task retries its Redis writes for up to PROPENSITY_STREAM_ONLINE_RETRY_S and
  then goes on: Kinesis holds the backlog meanwhile, and the next batches catch up. Only after
  that budget does the batch fail (and the job).

and returns one small report row (counts by kind and reason, a freshness sample, Redis
retries) to the driver, which joins them for the batch's log line and metrics.

Every write is idempotent per batch: object names depend only on the checkpoint's query id
(streaming.checkpoint), the batch id, the date and the partition, and a replayed batch after a
crash gives every partition the same rows, so it overwrites itself; a job started afresh on a
new checkpoint (batch ids from 0 again) never overwrites the objects of the old one.
ops/testing.py ships the destinations in memory and the stages chained without Spark.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import TaskContext
from pyspark.sql.pandas.types import from_arrow_schema

from propensity import events
from propensity import features as F
from propensity.settings import Settings
from propensity.spark import freeze_worker_heap
from propensity.streaming.checkpoint import Checkpoint
from propensity.streaming.destinations import BatchPart, Destination, Destinations
from propensity.streaming.parse import EVENT_RECORD, QUARANTINE_RECORD, unpack
from propensity.streaming.sessionize import INVALID, LATE, OUTPUT_SCHEMA, SNAPSHOT

log = logging.getLogger("propensity.stream")

# Freshness values a task sends the driver at most: evenly spaced order statistics of its own
# (with its smallest and largest), each standing for its share of the task's events.
FRESHNESS_SAMPLES = 64


@dataclass
class BatchReport:
    """What one task (or, joined, a whole micro-batch) wrote."""

    batch_id: int
    events: int = 0
    sessions: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    online_rows: int = 0
    online_retries: int = 0  # Redis writes repeated because Redis was unreachable
    write_s: float = 0.0  # the slowest task's
    tasks: int = 0
    # arrival -> readable in Redis: a sample, each value weighing `freshness_weights` events
    freshness_s: list[float] = field(default_factory=list)
    freshness_weights: list[float] = field(default_factory=list)

    def freshness_quantile(self, q: float) -> float | None:
        return weighted_quantile(self.freshness_s, self.freshness_weights, q)


# One row per task, what the driver collects.
TASK_REPORT_SCHEMA = pa.schema([
    ("partition", pa.int32()),
    ("events", pa.int64()),
    ("sessions", pa.int64()),
    ("quarantined", pa.string()),  # JSON {reason: count}
    ("online_rows", pa.int64()),
    ("online_retries", pa.int64()),
    ("write_s", pa.float64()),
    ("freshness_s", pa.list_(pa.float64())),
    ("freshness_weight", pa.float64()),
])


class MicroBatchSink:
    """`foreachBatch` target on the driver: starts the batch's writing tasks, joins their
    reports. Holds no Spark objects between batches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reports: dict[int, BatchReport] = {}
        self._tag: str | None = None

    def __call__(self, df: Any, batch_id: int) -> None:
        write = partial(write_partitions, settings=self.settings, batch_id=batch_id,
                        tag=self.query_tag)
        rows = df.mapInArrow(write, from_arrow_schema(TASK_REPORT_SCHEMA)).toArrow()
        self.reports[batch_id] = join_reports(batch_id, rows)

    @property
    def query_tag(self) -> str:
        if self._tag is None:  # Spark writes the metadata before the first batch
            self._tag = Checkpoint(self.settings).query_tag()
        return self._tag


def write_partitions(batches: Iterator[pa.RecordBatch], settings: Settings, batch_id: int,
                     tag: str) -> Iterator[pa.RecordBatch]:
    """The `mapInArrow` function of the sink: one task's rows of the stateful step's output,
    written; yields the task's report row."""
    table = pa.Table.from_batches(list(batches), schema=OUTPUT_SCHEMA)
    context = TaskContext.get()
    partition = context.partitionId() if context else 0
    report = _writer(settings).write(table, batch_id, partition, tag)
    freeze_worker_heap()
    yield report_row(report, partition)


_WRITERS: dict[tuple, PartitionWriter] = {}


def _writer(settings: Settings) -> PartitionWriter:
    """One writer per Python worker process and settings: its S3 filesystem, Feast config and
    Redis connection outlive the task (Spark reuses Python workers)."""
    key = tuple(sorted(settings.to_env().items()))
    if key not in _WRITERS:
        _WRITERS[key] = PartitionWriter(Destinations.of(settings))
    return _WRITERS[key]


class PartitionWriter:
    """Writes one partition's rows of a micro-batch to its destinations (destinations.py):
    lake, archive, quarantine, online store; side by side, as they are independent I/O."""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations
        self._pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="sink")

    def write(self, table: pa.Table, batch_id: int, partition: int = 0,
              tag: str = "") -> BatchReport:
        started = time.monotonic()
        report = BatchReport(batch_id, tasks=1)
        part = BatchPart(batch_id, partition, tag)
        kinds = table.column("kind")
        snapshots = snapshot_table(table.filter(pc.equal(kinds, SNAPSHOT)))
        quarantine = quarantine_table(table.filter(pc.equal(kinds, INVALID)),
                                      table.filter(pc.equal(kinds, LATE)))
        to = self.destinations
        writes: list[Destination] = []
        online: list[Destination] = []
        if snapshots.num_rows:
            writes = [to.lake, *to.archive.values()]
            online = list(to.online.values())
            report.events = snapshots.num_rows
            report.sessions = len(pc.unique(snapshots.column(F.SESSION_ID)))
        online_writes = [self._pool.submit(d.write, snapshots, part) for d in online]
        other_writes = [self._pool.submit(d.write, snapshots, part) for d in writes]
        if quarantine.num_rows:
            other_writes.append(self._pool.submit(to.quarantine.write, quarantine, part))
            reasons = pc.value_counts(quarantine.column(events.REASON)).to_pylist()
            report.quarantined = {r["values"]: r["counts"] for r in reasons}
        for future in online_writes:
            written = future.result()
            report.online_rows += written.rows
            report.online_retries += written.retries
        for future in other_writes:
            future.result()
        if snapshots.num_rows:
            arrivals = pc.cast(snapshots.column("arrival_time"), pa.int64()).to_numpy() / 1e6
            freshness = time.time() - arrivals
            report.freshness_s = sample_evenly(freshness, FRESHNESS_SAMPLES)
            report.freshness_weights = [len(freshness) / len(report.freshness_s)] * len(
                report.freshness_s)
        report.write_s = time.monotonic() - started
        return report


# -- the reports -----------------------------------------------------------------------------

def report_row(report: BatchReport, partition: int) -> pa.RecordBatch:
    weight = report.freshness_weights[0] if report.freshness_weights else 0.0
    return pa.RecordBatch.from_pylist([{
        "partition": partition, "events": report.events, "sessions": report.sessions,
        "quarantined": json.dumps(report.quarantined), "online_rows": report.online_rows,
        "online_retries": report.online_retries, "write_s": report.write_s,
        "freshness_s": report.freshness_s, "freshness_weight": weight,
    }], schema=TASK_REPORT_SCHEMA)


def join_reports(batch_id: int, rows: pa.Table) -> BatchReport:
    """The batch's report from its tasks' rows (sessions never span tasks: they add up)."""
    joined = BatchReport(batch_id)
    for row in rows.to_pylist():
        joined.tasks += 1
        joined.events += row["events"]
        joined.sessions += row["sessions"]
        for reason, count in json.loads(row["quarantined"]).items():
            joined.quarantined[reason] = joined.quarantined.get(reason, 0) + count
        joined.online_rows += row["online_rows"]
        joined.online_retries += row["online_retries"]
        joined.write_s = max(joined.write_s, row["write_s"])
        joined.freshness_s.extend(row["freshness_s"])
        joined.freshness_weights.extend([row["freshness_weight"]] * len(row["freshness_s"]))
    return joined


def sample_evenly(values: Any, count: int) -> list[float]:
    """At most `count` evenly spaced order statistics of `values`, the smallest and largest
    among them; all of them, sorted, when there are no more than `count`."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if len(ordered) <= count:
        return ordered.tolist()
    return ordered[np.linspace(0, len(ordered) - 1, count).round().astype(int)].tolist()


def weighted_quantile(values: list[float], weights: list[float], q: float) -> float | None:
    """The smallest value at or below which at least a share `q` of the weight lies."""
    if not values:
        return None
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.asarray(weights, dtype=float)[order])
    at = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(np.asarray(values)[order][min(at, len(values) - 1)])


def snapshot_table(rows: pa.Table) -> pa.Table:
    """Snapshot rows of the stateful step with their packed event unpacked: every lake,
    archive and online column."""
    values = unpack(rows.column("record").to_pylist(), EVENT_RECORD)
    values["user_session"] = rows.column("user_session")
    columns = {f.name: pa.array(values[f.name], f.type) for f in events.LAKE_SCHEMA}
    columns[F.SESSION_ID] = columns["user_session"]
    for name in (F.EVENT_TIMESTAMP, *F.SESSION_FEATURE_NAMES, *F.SESSION_PRODUCT_FEATURE_NAMES):
        columns[name] = rows.column(name)
    return pa.table(columns)


def quarantine_table(invalid: pa.Table, late: pa.Table) -> pa.Table:
    """Invalid events (packed with payload and reason) and late ones (packed events, whose
    payload is rebuilt with the contract) as one quarantine table."""
    parts = [unpack(invalid.column("record").to_pylist(), QUARANTINE_RECORD)]
    if late.num_rows:
        late_values = unpack(late.column("record").to_pylist(), EVENT_RECORD)
        late_values["user_session"] = late.column("user_session").to_pylist()
        frame = pd.DataFrame({name: late_values[name] for name in events.FIELD_NAMES})
        frame["event_time"] = F.utc_times(frame["event_time"])
        late_values[events.PAYLOAD] = [p.decode() for p in events.to_json(frame)]
        late_values[events.REASON] = [LATE] * late.num_rows
        late_values[events.DETAIL] = ["event time older than the watermark"] * late.num_rows
        parts.append(late_values)
    return pa.table({f.name: pa.array([v for part in parts for v in part[f.name]], f.type)
                     for f in events.QUARANTINE_SCHEMA})
