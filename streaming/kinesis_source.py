"""Kinesis as a Structured Streaming source, through PySpark's Python Data Source API.

Offsets are, per shard, a position: after a sequence number, or where a shard starts. Records
are read by the tasks, never by the driver: a batch's end position on a shard with new records
is a *pending read* ({"read": id, "from": position, "limit": ..., "cutoff": ...}): "what the
task of read `id` reads from `position`". That task reads from Kinesis up to the tail (or its
share of the read limit, or the until-idle cutoff), and before it hands any row to Spark it
records where it ended (`<checkpoint>/kinesis-reads/<id>-<shard>.json`). The driver resolves a
pending position from that record when it plans the next batch; a task run again (a retry, or
the batch re-run after a restart) finds the record and reads exactly the same range. So every
batch covers an exact range of every shard, and a restarted query re-reads exactly the
uncommitted ranges: exactly-once input, given sinks that overwrite per batch id. (Speculative
execution must stay off, Spark's default, and the job refuses it: two attempts of one read
running at once could record different ends.)

The driver learns whether a shard has new records by asking Kinesis for one record after its
position (GetRecords with a limit of 1), so the driver's share of the data is at most one
record per shard per trigger, and a batch is planned only when there is something to read.
Shard iterators are reused rather than asked for again (GetShardIterator has its own limit of
5 calls per second per shard, and every call is one more chance of being throttled): a task
records, beside its end, the iterator that points there, which the driver's next probe uses;
a probe that found nothing keeps its iterator for the next trigger; a probe that found a record
hands the iterator it read with (it still points at the read's start) to the task. A task that
stopped at its limit with records behind it records that too, and the next batch reads on
without a probe. So a steady stream costs no GetShardIterator at all, and a shard catching up
one GetRecords per batch less. Hints only: an expired or missing iterator is asked for anew.
Offsets planned by earlier versions of this source, whose end positions are sequence numbers,
are read as exact ranges.

Until idle (`until_idle`, the job's `--until-idle`), only records that arrived before the query
started are planned, so the job can stop once a trigger finds nothing new. The read limit
(`max_records_per_batch`) is applied by this source itself, the same on every PySpark the job
runs on (4.0 has no admission control for Python sources; see `latestOffset`).

Each row is one event: a record carrying several events (newline-delimited, or the user records
of a KPL aggregated record: propensity/kpl.py) becomes several rows that share the record's
shard, sequence number and arrival time, numbered in order by `sub_sequence`; so (sequence
number, sub-sequence) is an event's position, the same on every read of the record. A record
that starts as an aggregate but cannot be read is one row with its bytes as payload and the
reason and detail set (null for every other row), bound for the quarantine.

Resharding is handled: a closed parent shard is read to its end and marked done, and its
children start at TRIM_HORIZON only once their parents are done, so each partition key's
records stay in order. Starting at LATEST pins the start to the query's first planning time
(AT_TIMESTAMP), so a restart before the first checkpoint starts at the same place.

Offsets also name the stream they belong to (its ARN and creation time, so a stream deleted and
re-created under the same name, whose shard ids repeat, counts as another stream): a query
started with a checkpoint written for another stream fails with `CheckpointStreamMismatch`
instead of reading the wrong positions. Offsets without that name (older checkpoints) are
accepted and carry it from then on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from propensity.kinesis import list_shards
from propensity.streaming.checkpoint import Checkpoint
from propensity.streaming.kinesis_options import (
    FORMAT,
    GET_RECORDS_LIMIT,
    HINTS,
    PROBE_CALLS,
    RAW_SCHEMA,
    READS_FOLDER,
    CheckpointStreamMismatch,
    Position,
    SourceOptions,
    StreamIdentity,
    same_stream,
)
from propensity.streaming.kinesis_shards import (
    ShardCursor,
    kinesis_client,
    read_name,
    to_batch,
    with_retries,
)


class KinesisDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> StructType:
        return from_arrow_schema(RAW_SCHEMA)

    def streamReader(self, schema: Any) -> KinesisStreamReader:
        return KinesisStreamReader(SourceOptions.from_options(self.options))


@dataclass
class ShardRange(InputPartition):
    """One task's read of one shard: an exact range (`end_sequence`), or a pending read whose
    end the task finds and records (`read`: its id, limit and cutoff)."""

    shard_id: str
    start: Position
    end_sequence: str | None = None
    read: dict | None = None
    closed: bool = False  # the shard is closed: reading it to its end marks it done
    iterator: str | None = None  # a shard iterator at `start`, when the driver has one


class KinesisStreamReader(DataSourceStreamReader):
    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        self._client: Any = None
        self._reads: Checkpoint | None = None
        # Until idle, the planner (made when the query starts) reads what arrived before now.
        self._cutoff: float | None = time.time() if options.until_idle else None
        self._identity: StreamIdentity | None = None  # the live stream's, read once
        self._initial: dict | None = None
        self._planned: dict | None = None  # the latest offset Spark was given or told of
        self._closed: set[str] = set()  # closed shards, as the last listing showed
        self._reads_planned: list[tuple[str, list[str]]] = []  # (read id, its shards), in order
        # Per shard, the hints (HINTS) known for a position: {"position": ..., hint: value}.
        self._hints: dict[str, dict] = {}
        # The latest planned read's id, and the iterators at its shards' starts.
        self._read_iterators: tuple[str | None, dict[str, str]] = (None, {})

    def __getstate__(self) -> dict:  # tasks get the options only, never clients or caches
        return {"options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["options"])

    @property
    def kinesis(self) -> Any:
        if self._client is None:
            self._client = kinesis_client(self.options)
        return self._client

    @property
    def reads(self) -> Checkpoint:
        """The checkpoint's folder of recorded reads."""
        if self._reads is None:
            if not self.options.reads_dir:
                raise ValueError("the Kinesis source needs the reads_dir option (the job "
                                 "passes its checkpoint directory)")
            self._reads = Checkpoint(self.options.settings().model_copy(update={
                "checkpoint_dir": f"{self.options.reads_dir.rstrip('/')}/{READS_FOLDER}"}))
        return self._reads

    # -- planning (driver) ----------------------------------------------------------------

    def initialOffset(self) -> dict:
        """The same offset on every call: Spark asks for it when planning a new query's first
        batch and again when running it."""
        if self._initial is None:
            self._initial = self._first_offset()
        return self._initial

    def _first_offset(self) -> dict:
        if self.options.starting_position == "LATEST":
            start: Position = {"start": "AT_TIMESTAMP", "ts": time.time()}
        elif self.options.starting_position == "TRIM_HORIZON":
            start = {"start": "TRIM_HORIZON"}
        else:
            raise ValueError(f"starting_position must be TRIM_HORIZON or LATEST, not "
                             f"{self.options.starting_position!r}")
        return {"shards": {}, "new_shards": start, "stream": self._stream_identity()}

    def _stream_identity(self) -> StreamIdentity:
        """The stream's ARN and creation time, asked of Kinesis once per reader."""
        if self._identity is None:
            summary = with_retries(lambda: self.kinesis.describe_stream_summary(
                StreamName=self.options.stream))["StreamDescriptionSummary"]
            self._identity = {"arn": summary["StreamARN"], "created": round(
                summary["StreamCreationTimestamp"].timestamp(), 3)}
        return self._identity

    def _check_stream(self, offset: dict) -> StreamIdentity:
        """The live stream's identity, once the offset is known to belong to it (offsets from
        before identities were recorded are taken as they are)."""
        current = self._stream_identity()
        recorded = offset.get("stream")
        if recorded is not None and not same_stream(recorded, current):
            raise CheckpointStreamMismatch(recorded, current)
        return current

    def latestOffset(self, start: dict | None = None, limit: Any = None) -> dict:
        """The end of the next batch: a pending read on every readable shard with new records,
        each bounded by its share of `max_records_per_batch`; the start itself when no shard
        has any (no batch).

        One signature for both PySpark APIs (tests/test_spark_versions.py pins how each calls
        it): 4.2+ sees the parameters, treats the source as admission-controlled and passes
        the start (the previous batch's end) and its read limit (ReadAllAvailable, the default
        this reader keeps); 4.0 passes neither, so the start is the offset this reader last
        planned or was told of. The read limit is this source's own option on both."""
        start = start if start is not None else self._planned or self.initialOffset()
        identity = self._check_stream(start)
        resolved = {**start, "shards": {shard_id: self._resolved(shard_id, position)
                                        for shard_id, position in start["shards"].items()}}
        shards = self._readable_shards(resolved)
        budget = (self.options.max_records_per_batch // max(1, len(shards))
                  if self.options.max_records_per_batch > 0 else 0)
        read_id = uuid.uuid4().hex[:16]
        end: dict[str, Position] = {}
        iterators: dict[str, str] = {}
        for shard_id, (position, closed_at) in shards.items():
            found, iterator = self._news(shard_id, position)
            if found:
                end[shard_id] = {"read": read_id, "from": position, "limit": budget,
                                 "cutoff": self._cutoff}
                if iterator is not None:
                    iterators[shard_id] = iterator
            elif found is None and closed_at is not None:  # a closed shard, read to its end
                end[shard_id] = {**position, "done": True}
        self._read_iterators = (read_id, iterators)
        if not end:  # nothing new anywhere: no batch
            self._planned = {**start, "stream": identity}
            return self._planned
        self._reads_planned.append((read_id, [k for k, v in end.items() if "read" in v]))
        for shard_id, position in resolved["shards"].items():
            end.setdefault(shard_id, position)  # shards without news keep their position
        for shard_id, (position, _) in shards.items():
            end.setdefault(shard_id, position)  # new shards with nothing yet: where they start
        self._planned = {"shards": end, "new_shards": start["new_shards"], "stream": identity}
        return self._planned

    def _resolved(self, shard_id: str, position: Position) -> Position:
        """A pending read's end, as its task recorded it; other positions as they are."""
        if "read" not in position:
            return position
        recorded = self.reads.read(read_name(position["read"], shard_id))
        if recorded is None:
            raise RuntimeError(
                f"{shard_id}: the task of read {position['read']} recorded no end in "
                f"{self.options.reads_dir}/{READS_FOLDER}; was the checkpoint's folder changed?")
        end = json.loads(recorded)
        resolved = {k: v for k, v in end.items() if k not in HINTS}
        hints = {k: end[k] for k in HINTS if k in end}
        if hints:
            self._hints[shard_id] = {"position": resolved, **hints}
        return resolved

    def _readable_shards(self, start: dict) -> dict[str, tuple[Position, str | None]]:
        """Shards to read now: those in progress, and new ones whose parents are done."""
        known: dict[str, Position] = start["shards"]
        listed = list_shards(self.kinesis, self.options.stream)
        listed_ids = {s["ShardId"] for s in listed}
        readable: dict[str, tuple[Position, str | None]] = {}
        self._closed = set()
        for shard in listed:
            shard_id = shard["ShardId"]
            closed_at = shard["SequenceNumberRange"].get("EndingSequenceNumber")
            if closed_at is not None:
                self._closed.add(shard_id)
            position = known.get(shard_id)
            if position is None:
                parents = [shard.get("ParentShardId"), shard.get("AdjacentParentShardId")]
                if any(p in listed_ids and not known.get(p, {}).get("done")
                       for p in parents if p):
                    continue  # children wait until their parents are read to the end
                position = dict(start["new_shards"])
            if not position.get("done"):
                readable[shard_id] = (position, closed_at)
        return readable

    def _news(self, shard_id: str, position: Position) -> tuple[bool | None, str | None]:
        """Whether the shard has a record after `position` (`_probe`'s answer), and a shard
        iterator at `position` for the task when one is known. A shard whose last read
        stopped with records behind it is not probed."""
        hints = self._hints.pop(shard_id, {})
        if hints.get("position") != position:
            hints = {}
        if hints.get("behind"):
            return True, hints.get("iterator")
        cursor = ShardCursor(self.kinesis, self.options.stream, shard_id, position,
                              hints.get("iterator"))
        found = self._probe(cursor)
        if found is False and cursor.iterator is not None:  # still at `position`
            self._hints[shard_id] = {"position": position, "iterator": cursor.iterator}
        return found, cursor.used_iterator if found else None

    def _probe(self, cursor: ShardCursor) -> bool | None:
        """Whether the shard has a record after the cursor's position (that arrived before the
        cutoff, until idle): True; False when not yet; None when the shard has ended (closed,
        read to its end). Reads at most one record."""
        for _ in range(PROBE_CALLS):
            records = cursor.fetch(1)
            if records:
                arrival = records[0]["ApproximateArrivalTimestamp"].timestamp()
                return self._cutoff is None or arrival <= self._cutoff
            if cursor.ended:
                return None
            if cursor.caught_up:
                return False
        return False

    def partitions(self, start: dict, end: dict) -> list[ShardRange]:
        # A restart first re-plans the checkpoint's last uncommitted batch, before any
        # latestOffset call: its offsets are checked here. PySpark 4.0 also tells a restarted
        # reader the checkpoint's latest offset this way, as an empty range (end, end).
        self._check_stream(start)
        self._check_stream(end)
        self._planned = end
        ranges = []
        for shard_id, end_position in end["shards"].items():
            if end_position == start["shards"].get(shard_id):
                continue  # nothing new on this shard
            if "read" in end_position:
                read_id, iterators = self._read_iterators
                ranges.append(ShardRange(shard_id, end_position["from"], read={
                    k: end_position[k] for k in ("read", "limit", "cutoff")},
                    closed=shard_id in self._closed,
                    iterator=iterators.get(shard_id) if end_position["read"] == read_id
                    else None))
                continue
            start_position = start["shards"].get(shard_id) or dict(start["new_shards"])
            start_position = self._resolved(shard_id, start_position)
            end_sequence = end_position.get("after")
            if end_sequence is None or end_sequence == start_position.get("after"):
                continue
            ranges.append(ShardRange(shard_id, start_position, end_sequence))
        return ranges

    def commit(self, end: dict) -> None:
        """Forget the recorded reads the committed offsets no longer need: those of reads
        planned before the oldest one `end` refers to (Spark commits a batch after planning the
        next one, whose start is this end: its reads must stay)."""
        kept = {p["read"] for p in end["shards"].values() if "read" in p}
        while self._reads_planned and self._reads_planned[0][0] not in kept:
            read_id, shard_ids = self._reads_planned.pop(0)
            for shard_id in shard_ids:
                self.reads.delete(read_name(read_id, shard_id))

    # -- reading (tasks) ------------------------------------------------------------------

    def read(self, partition: ShardRange) -> Iterator[pa.RecordBatch]:
        if partition.read is None:
            records = self._read_range(partition, partition.end_sequence)
        else:
            records = self._pending_read(partition)
        yield to_batch(partition.shard_id, records)

    def _cursor(self, partition: ShardRange) -> ShardCursor:
        return ShardCursor(self.kinesis, self.options.stream, partition.shard_id,
                            partition.start, partition.iterator)

    def _pending_read(self, partition: ShardRange) -> list[tuple[str, float, bytes]]:
        """The records of a pending read: the range recorded by an earlier attempt, or read
        now up to the tail (its limit, its cutoff) and recorded before any row is handed on."""
        name = read_name(partition.read["read"], partition.shard_id)
        recorded = self.reads.read(name)
        if recorded is not None:
            end = json.loads(recorded)
            if end.get("after") in (None, partition.start.get("after")):
                return []
            return self._read_range(partition, end["after"])
        records, end = self._read_new(partition)
        self.reads.write(name, json.dumps(end, sort_keys=True))
        return records

    def _read_new(self, partition: ShardRange) -> tuple[list[tuple[str, float, bytes]],
                                                        Position]:
        """Read a shard from the partition's start to its tail (or the read's limit, or its
        cutoff); returns the records and the end position, with its hints (HINTS)."""
        limit = int(partition.read["limit"]) or None
        cutoff = partition.read["cutoff"]
        cursor = self._cursor(partition)
        records: list[tuple[str, float, bytes]] = []
        past_cutoff = False
        while limit is None or len(records) < limit:
            count = GET_RECORDS_LIMIT if limit is None else min(GET_RECORDS_LIMIT,
                                                                 limit - len(records))
            fetched = cursor.fetch(count)
            kept = fetched if cutoff is None else [
                r for r in fetched if r["ApproximateArrivalTimestamp"].timestamp() <= cutoff]
            records.extend((r["SequenceNumber"], r["ApproximateArrivalTimestamp"].timestamp(),
                            r["Data"]) for r in kept)
            if len(kept) < len(fetched):  # past the until-idle cutoff: stop before them
                past_cutoff = True
                break
            if cursor.ended or cursor.caught_up:
                break
        end: Position = {"after": records[-1][0]} if records else {
            k: v for k, v in partition.start.items() if k != "done"}
        if partition.closed and cursor.ended:
            end["done"] = True
        if not past_cutoff and cursor.iterator is not None:  # the cursor is at the end
            end["iterator"] = cursor.iterator
            if not cursor.caught_up:  # stopped at the limit
                end["behind"] = True
        return records, end

    def _read_range(self, partition: ShardRange, end_sequence: str
                    ) -> list[tuple[str, float, bytes]]:
        """The records after the partition's start up to and including `end_sequence`."""
        end = int(end_sequence)
        cursor = self._cursor(partition)
        records: list[tuple[str, float, bytes]] = []
        while True:
            fetched = cursor.fetch(GET_RECORDS_LIMIT)
            for record in fetched:
                sequence = record["SequenceNumber"]
                if int(sequence) > end:
                    return records
                records.append((sequence, record["ApproximateArrivalTimestamp"].timestamp(),
                                record["Data"]))
                if int(sequence) == end:
                    return records
            if cursor.ended or (not fetched and cursor.caught_up):
                reached = records[-1][0] if records else partition.start
                raise RuntimeError(
                    f"{partition.shard_id}: records up to {end_sequence} are no longer "
                    f"readable (retention expired?); reached {reached}")
