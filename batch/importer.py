"""Historical REES46 files into the event lake, through the same event contract as the stream.

Valid events are de-duplicated by identity and written per event date as
`<events>/date=D/import-<digest>.parquet`, invalid rows to
`<quarantine>/date=<today>/import-<digest>.parquet` with payload and reason. The digest is the
file's content hash, so importing a file again overwrites its own objects (idempotent). An
event that also came through the stream is in the lake twice; the batch counts it once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propensity import aws, events
from propensity.lake import day_folder
from propensity.lineage import file_hash
from propensity.settings import Settings


@dataclass
class ImportSummary:
    file: str
    read: int = 0
    valid: int = 0
    duplicates: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.valid - self.duplicates


def file_digest(path: str | Path) -> str:
    """A short digest of a file's bytes: its objects' name in the lake."""
    return file_hash(path, hashlib.blake2b(digest_size=8))


def import_file(settings: Settings, path: str | Path) -> ImportSummary:
    """Import one REES46 CSV (plain or .gz) into the lake; returns what happened to its rows."""
    summary = ImportSummary(str(path))
    arrival = pd.Timestamp(datetime.now(UTC)).floor("us")
    valid_parts: list[pa.Table] = []
    invalid_parts: list[pd.DataFrame] = []
    reasons: Counter[str] = Counter()
    for raw in events.read_csv(path):
        checked = events.validate(raw)
        summary.read += len(raw)
        reasons.update(checked.reason_counts())
        if len(checked.valid):
            valid_parts.append(events.to_arrow(checked.valid))
        if len(checked.invalid):
            invalid_parts.append(checked.invalid)
    summary.invalid = dict(reasons)
    name = f"import-{file_digest(path)}.parquet"
    filesystem = aws.s3_filesystem(settings)

    if valid_parts:
        valid = pa.concat_tables(valid_parts)
        summary.valid = valid.num_rows
        valid = _first_of_each_identity(valid)
        summary.duplicates = summary.valid - valid.num_rows
        valid = valid.append_column(events.LAKE_SCHEMA.field(events.ARRIVAL_TIME),
                                    pa.array([arrival] * valid.num_rows,
                                             events.LAKE_SCHEMA.field(events.ARRIVAL_TIME).type))
        dates = pc.strftime(valid.column("event_time"), format="%Y-%m-%d")
        summary.days = sorted(pc.unique(dates).to_pylist())
        for day in summary.days:
            pq.write_table(valid.filter(pc.equal(dates, day)),
                           day_folder(aws.s3_key(settings.events_uri), day) + name,
                           filesystem=filesystem)
    if invalid_parts:
        invalid = pd.concat(invalid_parts, ignore_index=True)
        # No Kinesis position for a file: those columns stay null.
        given = {events.PAYLOAD: invalid[events.PAYLOAD], events.REASON: invalid[events.REASON],
                 events.DETAIL: invalid[events.DETAIL],
                 events.ARRIVAL_TIME: [arrival] * len(invalid)}
        table = pa.table({f.name: pa.array(given[f.name], f.type) if f.name in given
                          else pa.nulls(len(invalid), f.type) for f in events.QUARANTINE_SCHEMA})
        pq.write_table(table, day_folder(aws.s3_key(settings.quarantine_uri), arrival.date())
                       + name, filesystem=filesystem)
    return summary


def _first_of_each_identity(table: pa.Table) -> pa.Table:
    ids = table.column("event_id").to_pandas()
    keep = ~ids.duplicated(keep="first").to_numpy()
    return table.filter(pa.array(keep)) if not keep.all() else table
