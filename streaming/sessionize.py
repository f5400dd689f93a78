"""The stateful step: per-session feature state in Spark's state store (RocksDB).

It runs PySpark's arbitrary stateful operator `transformWithStateInPandas`, grouped by a stable
hash bucket of the session id, with a `MapState` keyed by session id inside each bucket. Why
buckets: with real clickstream nearly every event of a micro-batch belongs to a different
session (REES46 gaps within a session: median 33 s), and the operator's fixed cost per group
(implicit-key and state calls to the JVM) dominated when grouping by session (earlier figures,
grouped by session: 0.40 ms per session per batch with applyInPandasWithState, 1.1 ms with
transformWithStateInPandas, 0.26 ms with transformWithState). Why this operator: it is the one
that exists on both Sparks the job runs on, the local pin (4.3) and the EMR runtime's (4.0, which
has no row-based transformWithState), and grouped by bucket it costs what the row-based one does
on 4.3 (README, "Why this stateful operator"; ops/bench/operator.py measures both).

The fold itself, `sessionize_bucket`, is a function of a bucket's events, its sessions (anything
with MapState's calls) and its clock, so the benchmark runs exactly the job's fold under each
operator.

For each bucket and micro-batch, events are put in event-time order per session (ties by Kinesis
sequence), folded with propensity.features' `SessionAccumulator` (the same fold that training
uses), and one row per counted event comes out: its packed record and its feature snapshot.
Invalid events (bucket -1) come out as `invalid` rows, bound for the quarantine.

Lateness: each bucket keeps its event-time frontier in state (the latest event time it has
seen); its watermark is the frontier minus the allowed delay, as of the start of the batch. An
event older than that comes out as a `late` row. Spark's own watermark would not do: the
operator only sees it in ProcessingTime or EventTime mode, and the first runs a no-data batch
on every trigger forever (so an until-idle run never ends) while the second drops late rows before
the processor without a trace (both measured). Sessions spread evenly over buckets, so every
bucket's frontier follows the stream's; and unlike Spark's, it survives restarts.

Expiry: a session whose last event is more than the session timeout behind its bucket's
watermark (as of the end of the batch) is removed from state, scanning the bucket's map once per
`scan_interval_s` of watermark progress (a quarter of the timeout, at most 5 minutes). No event
that is not late can still belong to such a session, because the fold starts a fresh session
after a gap longer than the timeout anyway: expiry frees memory, it never changes a feature.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, GroupedData
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

from propensity import features as F
from propensity.spark import freeze_worker_heap
from propensity.streaming.parse import EVENT_RECORD, INVALID_BUCKET

SNAPSHOT, INVALID, LATE = "snapshot", "invalid", "late"

_ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(),
                "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC")}
FEATURE_FIELDS = [pa.field(f.name, _ARROW_TYPES[f.dtype])
                  for f in (*F.SESSION_FEATURES, *F.SESSION_PRODUCT_FEATURES)]
OUTPUT_SCHEMA = pa.schema([
    ("kind", pa.string()),
    ("user_session", pa.string()),
    (F.EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
    ("record", pa.binary()),
    *FEATURE_FIELDS,
])
_NO_FEATURES = (None,) * len(FEATURE_FIELDS)

# Positions in a packed event record of the fold's inputs and of the ordering tie-breakers.
_FOLD_FIELDS = [EVENT_RECORD.index(name) for name in F.EVENT_FIELDS]
_SEQUENCE = EVENT_RECORD.index("sequence_number")
_SUB_SEQUENCE = EVENT_RECORD.index("sub_sequence")

_SESSION_KEY = StructType([StructField("session_id", StringType())])
_SESSION_VALUE = StructType([StructField("last_event_us", LongType()),
                             StructField("state", BinaryType())])
_CLOCK = StructType([StructField("frontier_us", LongType()),
                     StructField("last_scan_us", LongType())])


# Expiry scans a bucket's map at most this often (watermark time): a scan reads every session.
MAX_SCAN_INTERVAL_S = 300


@dataclass(frozen=True)
class SessionizeConfig:
    session_timeout_s: int
    watermark_delay_s: int

    @property
    def scan_interval_s(self) -> int:
        """A quarter of the session timeout, at most MAX_SCAN_INTERVAL_S: state holds at most
        the sessions of timeout + delay + a quarter of the timeout, whatever the timeout (a
        fixed 5 minutes let a 2-minute timeout's state swing by 3 times)."""
        return max(1, min(MAX_SCAN_INTERVAL_S, self.session_timeout_s // 4))

    @property
    def timeout_us(self) -> int:
        return self.session_timeout_s * 1_000_000

    @property
    def delay_us(self) -> int:
        return self.watermark_delay_s * 1_000_000


class SessionStore(Protocol):
    """What the fold needs of a bucket's sessions: the part of Spark's MapState it uses, keyed
    by (session id,), valued (last event time in us, packed accumulator)."""

    def getValue(self, key: tuple) -> tuple | None: ...

    def updateValue(self, key: tuple, value: tuple) -> None: ...

    def iterator(self) -> Iterator[tuple[tuple, tuple]]: ...

    def removeKey(self, key: tuple) -> None: ...


Clock = tuple[int, int]  # (frontier_us, last_scan_us) of a bucket


def sessionize_bucket(config: SessionizeConfig, bucket: int,
                      events: Iterable[tuple[str | None, bytes]], sessions: SessionStore,
                      clock: Clock | None) -> tuple[list[tuple], Clock | None]:
    """One bucket's micro-batch: (user_session, record) pairs in, output rows (in
    OUTPUT_SCHEMA order, times in us) and the bucket's new clock out; `sessions` is updated
    in place. The invalid bucket has no clock (None in, None out)."""
    if bucket == INVALID_BUCKET:
        return [(INVALID, None, None, record, *_NO_FEATURES) for _, record in events], None
    frontier_us, last_scan_us = clock if clock else (0, 0)
    watermark_us = frontier_us - config.delay_us if frontier_us else 0
    by_session: dict[str, list[tuple[list, bytes]]] = {}
    for session_id, record in events:
        values = orjson.loads(record)
        frontier_us = max(frontier_us, values[0])
        by_session.setdefault(session_id, []).append((values, record))
    out: list[tuple] = []
    for session_id, items in by_session.items():
        out.extend(_fold(config, sessions, session_id, items, watermark_us))
    # Expiry may use the watermark as of the end of the batch: no event that is not late
    # from now on can continue a session idle for longer than the timeout.
    watermark_us = frontier_us - config.delay_us
    if watermark_us - last_scan_us >= config.scan_interval_s * 1_000_000:
        _expire(config, sessions, watermark_us)
        last_scan_us = watermark_us
    return out, (frontier_us, last_scan_us)


def _fold(config: SessionizeConfig, sessions: SessionStore, session_id: str,
          items: list[tuple[list, bytes]], watermark_us: int) -> Iterator[tuple]:
    on_time = []
    for values, record in items:
        if values[0] < watermark_us:
            yield (LATE, session_id, None, record, *_NO_FEATURES)
        else:
            on_time.append((values, record))
    if not on_time:
        return
    on_time.sort(key=lambda item: (item[0][0], len(item[0][_SEQUENCE]),
                                   item[0][_SEQUENCE], item[0][_SUB_SEQUENCE]))
    stored = sessions.getValue((session_id,))
    acc = F.SessionAccumulator.from_bytes(stored[1]) if stored else None
    fold_inputs = [tuple(values[i] for i in _FOLD_FIELDS) for values, _ in on_time]
    for folded, position, snapshot_us in F.fold_session(acc, fold_inputs, config.timeout_us):
        acc = folded
        yield (SNAPSHOT, session_id, snapshot_us, on_time[position][1],
               *folded.session_values(), *folded.product_values(fold_inputs[position][2]))
    if acc is not None:
        sessions.updateValue((session_id,), (acc.last_us, acc.to_bytes()))


def _expire(config: SessionizeConfig, sessions: SessionStore, watermark_us: int) -> None:
    horizon_us = watermark_us - config.timeout_us
    expired = [key for key, value in sessions.iterator() if value[0] < horizon_us]
    for key in expired:
        sessions.removeKey(key)


class SessionProcessor(StatefulProcessor):
    """The fold as transformWithStateInPandas's processor: a bucket's frames in, one frame
    out, its sessions in a MapState and its clock in a ValueState."""

    def __init__(self, config: SessionizeConfig) -> None:
        self.config = config

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.sessions = handle.getMapState("sessions", _SESSION_KEY, _SESSION_VALUE)
        self.clock = handle.getValueState("clock", _CLOCK)

    def handleInputRows(self, key: tuple, rows: Iterator[pd.DataFrame],
                        timerValues: Any) -> Iterator[pd.DataFrame]:
        pairs = ((session, record) for frame in rows
                 for session, record in zip(frame["user_session"], frame["record"],
                                            strict=True))
        yield output_frame(self.fold(key[0], pairs))
        freeze_worker_heap()

    def fold(self, bucket: int, pairs: Iterable[tuple[str | None, bytes]]) -> list[tuple]:
        """sessionize_bucket on this bucket's state, its clock written back."""
        out, clock = sessionize_bucket(self.config, bucket, pairs, self.sessions,
                                       self.clock.get())
        if clock is not None:
            self.clock.update(clock)
        return out

    def close(self) -> None:
        pass


def sessionize(grouped: GroupedData, config: SessionizeConfig) -> DataFrame:
    """The stateful step on the contract stage's rows grouped by bucket. TimeMode None: no
    timers, no no-data batches; lateness and expiry follow each bucket's own frontier."""
    return grouped.transformWithStateInPandas(SessionProcessor(config),
                                              from_arrow_schema(OUTPUT_SCHEMA), "Append", "None")


_TIMESTAMP_COLUMNS = {f.name for f in OUTPUT_SCHEMA if pa.types.is_timestamp(f.type)}


def output_frame(rows: list[tuple]) -> pd.DataFrame:
    """Output rows (times in us) as the frame Spark converts to OUTPUT_SCHEMA: object
    columns, so nullable integers stay exact; timestamps as UTC datetimes."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(OUTPUT_SCHEMA)
    return pd.DataFrame({
        name: (F.utc_times(column) if name in _TIMESTAMP_COLUMNS
               else pd.Series(column, dtype=object))
        for name, column in zip(OUTPUT_SCHEMA.names, columns, strict=True)})
