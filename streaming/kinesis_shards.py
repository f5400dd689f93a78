"""Reading Kinesis shards for the source (kinesis_source.py): a cursor over one shard with its
iterator, GetShardIterator and GetRecords with retries on throttling, records as Arrow rows of
RAW_SCHEMA (a KPL aggregate split into its user records)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from propensity import aws, kpl
from propensity.kinesis import THROTTLING_CODES
from propensity.streaming.kinesis_options import (
    EXPIRED,
    RAW_SCHEMA,
    Position,
    SourceOptions,
)


class ShardCursor:
    """One shard read onward from a position, one GetRecords call at a time. The iterator is
    the one given, then each answer's next one; asked for (GetShardIterator, from the last
    record read) only when there is none yet or it has expired."""

    def __init__(self, kinesis: Any, stream: str, shard_id: str, position: Position,
                 iterator: str | None = None) -> None:
        self.kinesis, self.stream, self.shard_id = kinesis, stream, shard_id
        self.position = position  # after the last record fetched
        self.iterator = iterator  # at `position`; None: to be asked for
        self.used_iterator: str | None = None  # the iterator the last call read with
        self.ended = False  # a closed shard, read to its end
        self.caught_up = False  # the last answer came from the tip of the shard

    def fetch(self, limit: int) -> list[dict]:
        """The next records (at most `limit`)."""
        while True:
            if self.iterator is None:
                self.iterator = _shard_iterator(self.kinesis, self.stream, self.shard_id,
                                                self.position)
            response = _get_records(self.kinesis, self.iterator, limit)
            if response is not None:
                break
            self.iterator = None  # expired: ask for another from the last record read
        records = response["Records"]
        if records:
            self.position = {"after": records[-1]["SequenceNumber"]}
        self.used_iterator = self.iterator
        self.iterator = response.get("NextShardIterator")
        self.ended = self.iterator is None
        self.caught_up = response.get("MillisBehindLatest", 0) == 0
        return records


_CLIENTS: dict[tuple, Any] = {}


def kinesis_client(options: SourceOptions) -> Any:
    """One Kinesis client per process and endpoint: each task gets a new reader (unpickled
    from the options), and making a boto3 client costs tens of milliseconds of CPU."""
    key = (options.region, options.endpoint_url, options.access_key_id)
    if key not in _CLIENTS:
        _CLIENTS[key] = aws.client("kinesis", options.settings())
    return _CLIENTS[key]


def read_name(read_id: str, shard_id: str) -> str:
    return f"{read_id}-{shard_id}.json"


def _shard_iterator(kinesis: Any, stream: str, shard_id: str, position: Position) -> str:
    if "after" in position:
        kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                  "StartingSequenceNumber": position["after"]}
    elif position["start"] == "AT_TIMESTAMP":
        kwargs = {"ShardIteratorType": "AT_TIMESTAMP",
                  "Timestamp": datetime.fromtimestamp(position["ts"], UTC)}
    else:
        kwargs = {"ShardIteratorType": position["start"]}
    return with_retries(lambda: kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, **kwargs))["ShardIterator"]


def _get_records(kinesis: Any, iterator: str, limit: int) -> dict | None:
    """One GetRecords call with retries; None when the iterator has expired."""
    try:
        return with_retries(lambda: kinesis.get_records(ShardIterator=iterator, Limit=limit))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == EXPIRED:
            return None
        raise


def with_retries(call: Any, attempts: int = 20) -> Any:
    """Retry throttling and connection failures with backoff; other errors propagate."""
    delays = aws.backoff_delays(base=0.1, cap=5.0)
    for _ in range(attempts - 1):
        try:
            return call()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in THROTTLING_CODES:
                raise
        except (ConnectionError, HTTPClientError):
            pass
        time.sleep(next(delays))
    return call()


def to_batch(shard_id: str, records: list[tuple[str, float, bytes]]) -> pa.RecordBatch:
    sequences: list[str] = []
    subs: list[int] = []
    arrivals: list[int] = []
    payloads: list[bytes] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    for sequence, arrival_s, data in records:
        try:
            record_events, reason, detail = kpl.events_of(data), None, None
        except kpl.AggregateError as exc:  # the record whole, for the quarantine
            record_events, reason, detail = [data], exc.reason.value, exc.detail
        for sub, event in enumerate(record_events):
            sequences.append(sequence)
            subs.append(sub)
            arrivals.append(int(arrival_s * 1e6))
            payloads.append(event)
            reasons.append(reason)
            details.append(detail)
    return pa.RecordBatch.from_arrays([
        pa.array([shard_id] * len(sequences), pa.string()),
        pa.array(sequences, pa.string()),
        pa.array(subs, pa.int32()),
        pa.array(arrivals, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(payloads, pa.binary()),
        pa.array(reasons, pa.string()),
        pa.array(details, pa.string()),
    ], schema=RAW_SCHEMA)
