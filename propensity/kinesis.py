"""Kinesis producer and consumer helpers shared by replay, the streaming source and tests.

Producer: `KinesisWriter` sends (partition key, data) records in PutRecords calls within the
service limits, and retries throttled calls and the failed records of partial responses with
backoff until every record is accepted. A call that fails after Kinesis accepted it (a timeout)
is sent again, so delivery is at least once; consumers de-duplicate by event identity.

Consumer: `read_shard`, `read_all` and `read_events` read from TRIM_HORIZON until caught up.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from propensity import events, kpl
from propensity.aws import backoff_delays

MAX_RECORDS_PER_PUT = 500
MAX_BYTES_PER_PUT = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data plus partition key
THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException",
    "InternalFailure", "ServiceUnavailable", "KMSThrottlingException",
})

Record = tuple[str, bytes]  # (partition key, data)


class KinesisPutError(RuntimeError):
    """Records could not be delivered within the retry budget."""


@dataclass
class PutStats:
    records: int = 0  # accepted by Kinesis
    retried: int = 0  # record sends that had to be repeated
    calls: int = 0


class KinesisWriter:
    def __init__(self, kinesis: Any, stream: str, max_attempts: int = 30,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self._max_attempts = max_attempts
        self._sleep = sleep
        self.stats = PutStats()

    def put(self, records: Sequence[Record]) -> None:
        for chunk in put_batches(records):
            self._put_batch(chunk)

    def _put_batch(self, pending: list[Record]) -> None:
        delays = backoff_delays()
        for _attempt in range(self._max_attempts):
            self.stats.calls += 1
            try:
                response = self._kinesis.put_records(
                    StreamName=self._stream,
                    Records=[{"PartitionKey": key, "Data": data} for key, data in pending],
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in THROTTLING_CODES:
                    raise
                failed = pending
            except (ConnectionError, HTTPClientError):
                failed = pending
            else:
                failed = [record for record, result in zip(pending, response["Records"],
                                                           strict=True)
                          if result.get("ErrorCode")]
                self.stats.records += len(pending) - len(failed)
            if not failed:
                return
            self.stats.retried += len(failed)
            pending = failed
            self._sleep(next(delays))
        raise KinesisPutError(
            f"{len(pending)} records not accepted by {self._stream} after "
            f"{self._max_attempts} attempts")


def put_batches(records: Sequence[Record]) -> Iterator[list[Record]]:
    """Split records into PutRecords calls within the count and size limits."""
    batch: list[Record] = []
    size = 0
    for key, data in records:
        record_size = len(key.encode()) + len(data)
        if record_size > MAX_RECORD_BYTES:
            raise ValueError(f"record of {record_size} bytes exceeds Kinesis' 1 MiB limit")
        if batch and (len(batch) == MAX_RECORDS_PER_PUT or size + record_size > MAX_BYTES_PER_PUT):
            yield batch
            batch, size = [], 0
        batch.append((key, data))
        size += record_size
    if batch:
        yield batch


def list_shards(kinesis: Any, stream: str) -> list[dict]:
    shards: list[dict] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        response = kinesis.list_shards(**kwargs)
        shards.extend(response["Shards"])
        token = response.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


class ShardMap:
    """Which open shard a partition key lands on (Kinesis hashes keys with MD5)."""

    def __init__(self, shards: list[dict]) -> None:
        open_shards = sorted(
            (int(s["HashKeyRange"]["StartingHashKey"]), s["ShardId"])
            for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"])
        self._starts = [start for start, _ in open_shards]
        self._ids = [shard_id for _, shard_id in open_shards]

    @property
    def shard_ids(self) -> list[str]:
        return list(self._ids)

    def shard_for(self, partition_key: str) -> str:
        hashed = int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")
        return self._ids[bisect.bisect_right(self._starts, hashed) - 1]


def read_shard(kinesis: Any, stream: str, shard_id: str,
               iterator_type: str = "TRIM_HORIZON") -> Iterator[dict]:
    """Every record of one shard from `iterator_type` until the reader has caught up."""
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id,
                                          ShardIteratorType=iterator_type)["ShardIterator"]
    delays = backoff_delays()
    while iterator:
        try:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10000)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in THROTTLING_CODES:
                raise
            time.sleep(next(delays))
            continue
        yield from response["Records"]
        iterator = response.get("NextShardIterator")
        if not response["Records"] and response.get("MillisBehindLatest", 0) == 0:
            return


def read_all(kinesis: Any, stream: str) -> Iterator[tuple[str, dict]]:
    """(shard id, record) for every record in the stream, shard by shard."""
    for shard in list_shards(kinesis, stream):
        for record in read_shard(kinesis, stream, shard["ShardId"]):
            yield shard["ShardId"], record


def read_events(kinesis: Any, stream: str) -> events.Validated:
    """Every event in the stream (those of KPL aggregated records too) through the event
    contract, with its shard, record sequence number and arrival time as extra columns.
    A broken aggregated record raises kpl.AggregateError."""
    payloads: list[bytes] = []
    extra: dict[str, list] = {"shard_id": [], "sequence_number": [], "arrival_time": []}
    for shard_id, record in read_all(kinesis, stream):
        for line in kpl.events_of(record["Data"]):
            payloads.append(line)
            extra["shard_id"].append(shard_id)
            extra["sequence_number"].append(record["SequenceNumber"])
            extra["arrival_time"].append(record["ApproximateArrivalTimestamp"])
    return events.validate(events.frame_from_json(payloads, extra))
