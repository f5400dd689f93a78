"""Raw Kinesis rows -> events, through the event contract, packed for the stateful step.

Runs as a vectorised `mapInArrow` stage. Each output row carries the grouping bucket, the session
id and one `record`: the event's fields plus where it came from (shard, sequence, sub-sequence,
arrival time), packed as a JSON array. The stateful operator reads its input cell by cell, so
three cells per row instead of twenty matters.
Invalid events go to INVALID_BUCKET, their record holding the raw payload and the reason, so
they reach the quarantine through the same exactly-once micro-batch. So do the Kinesis records
the source could not split into events (broken KPL aggregates: their reason is set already),
with the record's bytes in base64 as payload.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from propensity import events
from propensity.spark import freeze_worker_heap

INVALID_BUCKET = -1
KINESIS_FIELDS = ("shard_id", "sequence_number", "sub_sequence", "arrival_time")
# What a packed record holds, in order; times are integer microseconds since the epoch.
EVENT_RECORD = tuple(n for n in (*events.FIELD_NAMES, *KINESIS_FIELDS) if n != "user_session")
QUARANTINE_RECORD = (events.PAYLOAD, events.REASON, events.DETAIL, *KINESIS_FIELDS)
_TIMES = ("event_time", "arrival_time")

PARSED_SCHEMA = pa.schema([
    pa.field("bucket", pa.int32(), nullable=False),
    ("user_session", pa.string()),
    ("record", pa.binary()),
])


def bucket_of(session_id: str, buckets: int) -> int:
    """A stable bucket for a session: the same on every machine and every run."""
    return zlib.crc32(session_id.encode()) % buckets


def parse_batches(raw: Iterator[pa.RecordBatch], buckets: int) -> Iterator[pa.RecordBatch]:
    for batch in raw:
        unsplit = pc.is_valid(batch.column(events.REASON))
        if pc.any(unsplit).as_py():
            yield _invalid_batch(_unsplit_records(batch.filter(unsplit)))
            batch = batch.filter(pc.invert(unsplit))
        if batch.num_rows == 0:
            continue
        extra = {name: batch.column(name).to_pandas() for name in KINESIS_FIELDS}
        checked = events.validate(events.frame_from_json(batch.column("payload").to_pylist(),
                                                         extra))
        valid = checked.valid
        if len(valid):
            sessions = valid["user_session"].tolist()
            yield pa.RecordBatch.from_arrays([
                pa.array([bucket_of(s, buckets) for s in sessions], pa.int32()),
                pa.array(sessions, pa.string()),
                pa.array(pack(valid, EVENT_RECORD), pa.binary()),
            ], schema=PARSED_SCHEMA)
        if len(checked.invalid):
            yield _invalid_batch(checked.invalid)
    freeze_worker_heap()


def _unsplit_records(rows: pa.RecordBatch) -> pd.DataFrame:
    """Records the source could not split, as invalid rows: the whole record in base64 (a
    string, as the quarantine's payload is; its bytes are not text), the source's reason."""
    frame = rows.select(list(KINESIS_FIELDS)).to_pandas()
    frame[events.PAYLOAD] = [base64.b64encode(data).decode()
                             for data in rows.column(events.PAYLOAD).to_pylist()]
    frame[events.REASON] = rows.column(events.REASON).to_pylist()
    frame[events.DETAIL] = [f"{detail} (payload: the whole Kinesis record, base64)"
                            for detail in rows.column(events.DETAIL).to_pylist()]
    return frame


def _invalid_batch(invalid: pd.DataFrame) -> pa.RecordBatch:
    rows = len(invalid)
    return pa.RecordBatch.from_arrays([
        pa.array(np.full(rows, INVALID_BUCKET, np.int32)),
        pa.nulls(rows, pa.string()),
        pa.array(pack(invalid, QUARANTINE_RECORD), pa.binary()),
    ], schema=PARSED_SCHEMA)


def pack(frame: pd.DataFrame, fields: Sequence[str]) -> list[bytes]:
    """Each row's `fields` as a compact JSON array (times as integer microseconds)."""
    columns = []
    for name in fields:
        column = frame[name]
        if name in _TIMES:
            column = pd.to_datetime(column, utc=True).astype("datetime64[us, UTC]").astype(
                np.int64)
        columns.append(column.astype(object).where(column.notna(), None).tolist())
    return [orjson.dumps(row) for row in zip(*columns, strict=True)]


def unpack(records: Sequence[bytes], fields: Sequence[str]) -> dict[str, list]:
    """Packed records back into columns of plain values."""
    rows = [orjson.loads(r) for r in records]
    return {name: [row[i] for row in rows] for i, name in enumerate(fields)}
