"""Kinesis helpers: PutRecords batching and retries, shard routing, reading back."""

from __future__ import annotations

import pytest

from propensity import aws
from propensity.kinesis import (
    MAX_RECORD_BYTES,
    KinesisPutError,
    KinesisWriter,
    ShardMap,
    list_shards,
    put_batches,
    read_all,
)
from propensity.ops.testing import FlakyKinesis
from propensity.settings import Settings


def test_put_batches_respect_count_and_size_limits() -> None:
    small = [(f"k{i}", b"x") for i in range(1200)]
    assert [len(b) for b in put_batches(small)] == [500, 500, 200]
    big = [("k", b"x" * (MAX_RECORD_BYTES - 1))] * 6
    assert [len(b) for b in put_batches(big)] == [5, 1]
    with pytest.raises(ValueError, match="1 MiB"):
        list(put_batches([("k", b"x" * MAX_RECORD_BYTES)]))


@pytest.mark.integration
def test_shard_map_agrees_with_kinesis_routing(stream: Settings) -> None:
    kinesis = aws.client("kinesis", stream)
    shard_map = ShardMap(list_shards(kinesis, stream.kinesis_stream))
    keys = [f"session-{i}" for i in range(300)]
    response = kinesis.put_records(StreamName=stream.kinesis_stream, Records=[
        {"PartitionKey": key, "Data": b"{}"} for key in keys])
    routed = [r["ShardId"] for r in response["Records"]]
    assert routed == [shard_map.shard_for(key) for key in keys]
    assert len(set(routed)) == 2


@pytest.mark.integration
def test_writer_retries_throttling_and_partial_failures_exactly_once(stream: Settings) -> None:
    flaky = FlakyKinesis(aws.client("kinesis", stream), throttled_calls=2, partial_calls=3)
    writer = KinesisWriter(flaky, stream.kinesis_stream, sleep=lambda _: None)
    records = [(f"s{i % 37}", f"{i}".encode()) for i in range(1100)]
    writer.put(records)
    assert flaky.rejected_records > 0
    assert writer.stats.retried == flaky.rejected_records
    assert writer.stats.records == 1100
    got = sorted(int(r["Data"]) for _, r in read_all(flaky, stream.kinesis_stream))
    assert got == list(range(1100))


@pytest.mark.integration
def test_writer_gives_up_loudly(stream: Settings) -> None:
    flaky = FlakyKinesis(aws.client("kinesis", stream), throttled_calls=100)
    writer = KinesisWriter(flaky, stream.kinesis_stream, max_attempts=3, sleep=lambda _: None)
    with pytest.raises(KinesisPutError, match="2 records not accepted"):
        writer.put([("a", b"1"), ("b", b"2")])
