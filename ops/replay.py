"""Replay a REES46 CSV file into Kinesis, as the shop's tracker would have sent it.

Rows are validated with the event contract; invalid ones are counted by reason and never sent.
Valid events are sent in file order, repeated rows included (the raw data has them and the
streaming job must count them once), with partition key = session id so that every session's
events reach one shard in order. `speed` keeps the original gaps between events divided by it;
`None` sends as fast as Kinesis accepts.

Several events may share one record (newline-delimited JSON) because emulators and small streams
take far fewer records than bytes per second. Only events bound for the same shard share a record,
so per-session order still holds. With `aggregate`, records are KPL aggregated records instead,
one user record per event, as shops that write through the Kinesis Producer Library send them;
they are built by AWS Labs' aggregator (the `aws-kinesis-agg` package of the `local` extra), not
by this project, so the streaming job's own decoder (propensity/kpl.py) is tested against it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from propensity import events
from propensity.kinesis import (
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_PUT,
    KinesisWriter,
    Record,
    ShardMap,
)

# With pacing, events due within this window go out in one PutRecords call.
_FLUSH_WINDOW_S = 0.05
_MAX_PARTITION_KEY_BYTES = 256  # Kinesis' limit on a key (in characters; session ids are ASCII)


@dataclass
class ReplaySummary:
    read: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    records: int = 0
    retried: int = 0
    duplicates: int = 0  # valid events whose identity occurred earlier in the file (also sent)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "read": self.read, "invalid": dict(self.invalid),
            "invalid_total": sum(self.invalid.values()), "sent": self.sent,
            "records": self.records, "retried": self.retried, "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3), "events_per_second": round(self.rate, 1),
        }

    def format(self) -> str:
        invalid = sum(self.invalid.values())
        by_reason = ", ".join(f"{r}: {n}" for r, n in sorted(self.invalid.items()))
        return "\n".join([
            f"  read        {self.read:>10,}",
            f"  invalid     {invalid:>10,}" + (f"  ({by_reason})" if by_reason else ""),
            f"  sent        {self.sent:>10,}  events in {self.records:,} records"
            f" (record sends retried: {self.retried:,})",
            f"  duplicates  {self.duplicates:>10,}  (sent as they occur; the stream counts them"
            " once)",
            f"  rate        {self.rate:>10,.0f}  events/s over {self.seconds:.1f} s",
        ])


@dataclass
class SentEvent:
    """An event as sent: partition key (its session), JSON, event time."""

    key: str
    data: bytes
    epoch_s: float


def replay(path: str | Path, writer: KinesisWriter, shard_map: ShardMap, *,
           speed: float | None = None, limit: int | None = None, events_per_record: int = 1,
           aggregate: bool = False, progress: bool = True) -> ReplaySummary:
    """Replay a REES46 file: every valid row, in file order."""
    summary = ReplaySummary()
    seen: set[str] = set()

    def valid_frames() -> Iterator[pd.DataFrame]:
        for batch in _validated(path, limit, summary):
            for event_id in batch.valid["event_id"]:
                summary.duplicates += event_id in seen
                seen.add(event_id)
            yield batch.valid

    return send_events(valid_frames(), writer, shard_map, speed=speed,
                       events_per_record=events_per_record, aggregate=aggregate,
                       progress=progress, total=limit, summary=summary)


def send_events(frames: Iterable[pd.DataFrame], writer: KinesisWriter, shard_map: ShardMap, *,
                speed: float | None = None, events_per_record: int = 1, aggregate: bool = False,
                progress: bool = True, total: int | None = None,
                summary: ReplaySummary | None = None,
                on_sent: Callable[[list[SentEvent], float], None] | None = None) -> ReplaySummary:
    """Send valid events (the contract's typed frames, in order) to Kinesis, paced by their
    event times divided by `speed` (None: as fast as possible), up to `events_per_record` in a
    record (KPL aggregated records with `aggregate`). `on_sent` sees each flushed group of
    events with the time just before they were sent."""
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    if events_per_record < 1:
        raise ValueError("events_per_record must be at least 1")
    summary = summary or ReplaySummary()
    started = time.monotonic()
    pacer = _Pacer(speed)
    bar = tqdm(total=total, unit="ev", desc="replay", disable=not progress, file=sys.stderr)
    buffer: list[SentEvent] = []
    max_buffer = MAX_RECORDS_PER_PUT * events_per_record

    def flush() -> None:
        if not buffer:
            return
        items = [(e.key, e.data) for e in buffer]
        records = (kpl_aggregate(items, events_per_record, shard_map) if aggregate
                   else pack(items, events_per_record, shard_map))
        retried = writer.stats.retried
        sending_at = time.time()
        writer.put(records)
        if on_sent:
            on_sent(buffer, sending_at)
        summary.sent += len(buffer)
        summary.records += len(records)
        summary.retried += writer.stats.retried - retried
        bar.update(len(buffer))
        buffer.clear()

    for frame in frames:
        for event in _events(frame):
            wait = pacer.wait_s(event.epoch_s)
            if wait > _FLUSH_WINDOW_S:
                flush()
                time.sleep(wait)
            buffer.append(event)
            if len(buffer) >= max_buffer:
                flush()
    flush()
    bar.close()
    summary.seconds = time.monotonic() - started
    return summary


def _validated(path: str | Path, limit: int | None,
               summary: ReplaySummary) -> Iterator[events.Validated]:
    for raw in events.read_csv(path):
        if limit is not None:
            raw = raw.iloc[: max(0, limit - summary.read)]
        if raw.empty:
            return
        summary.read += len(raw)
        batch = events.validate(raw)
        summary.invalid.update(batch.reason_counts())
        yield batch


def _events(valid: pd.DataFrame) -> Iterator[SentEvent]:
    epochs = valid["event_time"].astype("datetime64[us, UTC]").astype("int64") / 1e6
    yield from map(SentEvent, valid["user_session"], events.to_json(valid), epochs)


class _Pacer:
    """When each event is due: original gaps divided by `speed`, from the first event."""

    def __init__(self, speed: float | None) -> None:
        self._speed = speed
        self._origin: tuple[float, float] | None = None  # (event epoch, monotonic time)

    def wait_s(self, epoch_s: float) -> float:
        if self._speed is None:
            return 0.0
        now = time.monotonic()
        if self._origin is None:
            self._origin = (epoch_s, now)
        event0, wall0 = self._origin
        return wall0 + (epoch_s - event0) / self._speed - now


def pack(items: Sequence[Record], events_per_record: int, shard_map: ShardMap) -> list[Record]:
    """Records of up to `events_per_record` events, each record's events bound for one shard."""
    if events_per_record == 1:
        return list(items)
    records: list[Record] = []
    for shard_items in _by_shard(items, shard_map):
        chunk: list[Record] = []
        size = 0
        for key, data in shard_items:
            full = len(chunk) == events_per_record
            if chunk and (full or size + len(data) + len(chunk[0][0]) >= MAX_RECORD_BYTES):
                records.append(_join(chunk))
                chunk, size = [], 0
            chunk.append((key, data))
            size += len(data) + 1
        records.append(_join(chunk))
    return records


def kpl_aggregate(items: Sequence[Record], events_per_record: int, shard_map: ShardMap
                  ) -> list[Record]:
    """KPL aggregated records of up to `events_per_record` user records (one event each), each
    record's user records bound for one shard, built by aws_kinesis_agg's RecordAggregator. An
    aggregated record takes its first user record's partition key, so it lands on their shard."""
    # Imported here: the local extra's package, which neither the cluster nor the scorer has.
    from aws_kinesis_agg.aggregator import RecordAggregator

    records: list[Record] = []

    def add(aggregated: Any) -> None:
        key, _, data = aggregated.get_contents()
        records.append((key, data))

    for shard_items in _by_shard(items, shard_map):
        # Room for the partition key within Kinesis' limit on data plus key.
        aggregator = RecordAggregator(max_size=MAX_RECORD_BYTES - _MAX_PARTITION_KEY_BYTES)
        for key, data in shard_items:
            full = aggregator.add_user_record(key, data)
            if full is not None:
                add(full)
            if aggregator.get_num_user_records() == events_per_record:
                add(aggregator.clear_and_get())
        if aggregator.get_num_user_records():
            add(aggregator.clear_and_get())
    return records


def _by_shard(items: Sequence[Record], shard_map: ShardMap) -> Iterable[list[Record]]:
    """The items bound for each shard, in order."""
    by_shard: dict[str, list[Record]] = {}
    for key, data in items:
        by_shard.setdefault(shard_map.shard_for(key), []).append((key, data))
    return by_shard.values()


def _join(chunk: list[Record]) -> Record:
    return chunk[0][0], b"\n".join(data for _, data in chunk)
