"""The Kinesis source against moto: the tasks read the records and record where they ended, so a
task run again reads exactly the same range and the driver reads at most one record per shard;
offsets name their stream, and a checkpoint written for another stream (or for a stream since
deleted and re-created under the same name) is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from propensity import aws
from propensity.ops.testing import isolated, with_fresh_stream
from propensity.settings import Settings
from propensity.streaming.kinesis_options import CheckpointStreamMismatch, SourceOptions
from propensity.streaming.kinesis_source import KinesisStreamReader
from tests.test_events import _json

pytestmark = pytest.mark.integration


def _reader(settings: Settings) -> KinesisStreamReader:
    return KinesisStreamReader(SourceOptions.from_settings(settings))


def _put(settings: Settings, count: int) -> None:
    aws.client("kinesis", settings).put_records(
        StreamName=settings.kinesis_stream,
        Records=[{"PartitionKey": f"s{i}", "Data": _json(user_session=f"s{i}")}
                 for i in range(count)])


def _identity(settings: Settings) -> dict:
    summary = aws.client("kinesis", settings).describe_stream_summary(
        StreamName=settings.kinesis_stream)["StreamDescriptionSummary"]
    return {"arn": summary["StreamARN"],
            "created": round(summary["StreamCreationTimestamp"].timestamp(), 3)}


def test_offsets_carry_the_stream_and_another_streams_are_refused(stack: Settings,
                                                                   stream: Settings) -> None:
    _put(stream, 20)
    reader = _reader(stream)
    initial = reader.initialOffset()
    assert initial["stream"] == _identity(stream)
    latest = reader.latestOffset(initial)
    assert latest["stream"] == initial["stream"]
    assert _events(reader, reader.partitions(initial, latest)) == 20

    # Another stream with the same shard ids: its reader refuses the offsets, when planning
    # the next batch and when re-planning an uncommitted one after a restart.
    other = with_fresh_stream(stack, shards=2)
    _put(other, 5)
    with pytest.raises(CheckpointStreamMismatch) as refused:
        _reader(other).latestOffset(latest)
    message = str(refused.value)
    assert message.startswith(f"this checkpoint was written for stream {initial['stream']['arn']}"
                              " created 20")
    assert f"but the job reads {_identity(other)['arn']} created 20" in message
    assert "new checkpoint directory (PROPENSITY_CHECKPOINT_DIR)" in message
    with pytest.raises(CheckpointStreamMismatch):
        _reader(other).partitions(initial, latest)

    # The same name, deleted and re-created: the same ARN, another creation time.
    kinesis = aws.client("kinesis", stream)
    kinesis.delete_stream(StreamName=stream.kinesis_stream)
    time.sleep(0.01)
    aws.ensure_stream(stream)
    assert _identity(stream)["arn"] == initial["stream"]["arn"]
    with pytest.raises(CheckpointStreamMismatch) as refused:
        _reader(stream).latestOffset(latest)
    assert refused.value.recorded == initial["stream"]
    assert refused.value.current == _identity(stream) != initial["stream"]


def test_offsets_from_before_the_stream_was_recorded_are_accepted(stream: Settings) -> None:
    _put(stream, 10)
    reader = _reader(stream)
    old_initial = {k: v for k, v in reader.initialOffset().items() if k != "stream"}
    old_latest = {k: v for k, v in reader.latestOffset(old_initial).items()
                  if k != "stream"}
    restarted = _reader(stream)  # a new query run on the old checkpoint
    replanned = restarted.partitions(old_initial, old_latest)  # its uncommitted batch, again
    assert _events(restarted, replanned) == 10
    _put(stream, 5)
    latest = restarted.latestOffset(old_latest)
    assert latest["stream"] == _identity(stream)  # recorded from then on
    assert _events(restarted, restarted.partitions(old_latest, latest)) == 5
    restarted.commit(latest)


def test_offsets_of_the_driver_side_reader_are_read_as_exact_ranges(stream: Settings) -> None:
    """Offsets planned by the earlier source, which read on the driver: end positions are
    sequence numbers, and a restarted query reads exactly those ranges."""
    _put(stream, 8)
    sequences = {}
    kinesis = aws.client("kinesis", stream)
    for shard in kinesis.list_shards(StreamName=stream.kinesis_stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream.kinesis_stream, ShardId=shard["ShardId"],
            ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        found = kinesis.get_records(ShardIterator=iterator)["Records"]
        if found:
            sequences[shard["ShardId"]] = [r["SequenceNumber"] for r in found]
    reader = _reader(stream)
    start = reader.initialOffset()
    end = {**start, "shards": {s: {"after": seqs[-2]} for s, seqs in sequences.items()}}
    _put(stream, 3)
    assert _events(reader, reader.partitions(start, end)) == 8 - len(sequences)
    following = reader.latestOffset(end)
    assert _events(reader, reader.partitions(end, following)) == len(sequences) + 3


def test_a_task_run_again_reads_exactly_the_same_records(stream: Settings) -> None:
    _put(stream, 12)
    reader = _reader(stream)
    start = reader.initialOffset()
    end = reader.latestOffset(start)
    ranges = reader.partitions(start, end)
    first = [_rows(reader, r) for r in ranges]
    _put(stream, 7)  # arrive before the retry: not the retried batch's
    retried = _reader(stream)  # as in another worker, or after a restart
    assert [_rows(retried, r) for r in retried.partitions(start, end)] == first
    assert sum(len(rows) for rows in first) == 12
    following = retried.latestOffset(end)
    assert _events(retried, retried.partitions(end, following)) == 7
    assert retried.latestOffset(following) == following  # nothing new: no batch


class _Counting:
    """A Kinesis client that counts the calls made through it, and the records GetRecords
    answered each."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}
        self.records: list[int] = []

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def counted(**kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            answer = method(**kwargs)
            if name == "get_records":
                self.records.append(len(answer["Records"]))
            return answer
        return counted

    def reset(self) -> None:
        self.calls.clear()
        self.records.clear()


def _counted(reader: KinesisStreamReader) -> _Counting:
    reader._client = _Counting(reader.kinesis)
    return reader._client


def test_the_driver_reads_at_most_one_record_per_shard(stream: Settings) -> None:
    _put(stream, 50)
    reader = _reader(stream)
    kinesis = _counted(reader)
    start = reader.initialOffset()
    end = reader.latestOffset(start)
    assert kinesis.records and max(kinesis.records) <= 1 and sum(kinesis.records) <= 2
    worker = _reader(stream)
    assert _events(worker, worker.partitions(start, end)) == 50


def test_a_steady_stream_asks_for_no_shard_iterator(stream: Settings) -> None:
    """Once each shard has been read, the iterators the tasks and the probes hand on are
    used: no GetShardIterator, one probe per shard per trigger, one read per shard per batch."""
    reader = _reader(stream)
    kinesis = _counted(reader)
    start = reader.initialOffset()
    _put(stream, 40)
    end = reader.latestOffset(start)
    assert _events(reader, reader.partitions(start, end)) == 40
    shards = len(end["shards"])
    assert shards == 2
    for batch in range(3):
        kinesis.reset()
        _put(stream, 40)
        start, end = end, reader.latestOffset(end)
        assert _events(reader, reader.partitions(start, end)) == 40
        reader.commit(start)
        assert kinesis.calls.get("get_shard_iterator", 0) == 0, batch
        assert kinesis.calls["get_records"] == 2 * shards  # a probe and a read per shard
    kinesis.reset()
    assert reader.latestOffset(end) == end  # nothing new: no batch
    assert kinesis.calls == {"list_shards": 1, "get_records": shards}


def test_a_shard_read_to_its_limit_with_records_behind_is_read_on_unprobed(
        stream: Settings) -> None:
    _put(stream, 40)
    time.sleep(0.2)  # so the first records are behind the latest (moto counts milliseconds)
    _put(stream, 40)
    reader = KinesisStreamReader(SourceOptions.from_settings(stream, max_records_per_batch=20))
    kinesis = _counted(reader)
    start, total = reader.initialOffset(), 0
    end = reader.latestOffset(start)
    total += _events(reader, reader.partitions(start, end))
    assert total == 20
    kinesis.reset()
    start, end = end, reader.latestOffset(end)
    assert "get_records" not in kinesis.calls  # both shards had records behind: no probe
    while end != start:
        total += _events(reader, reader.partitions(start, end))
        start, end = end, reader.latestOffset(end)
    assert total == 80

    restarted = _reader(stream)  # hints are hints: a new reader goes on from the offsets
    _put(stream, 3)
    assert _events(restarted, restarted.partitions(end, restarted.latestOffset(end))) == 3


def _rows(reader: KinesisStreamReader, partition) -> list[tuple]:
    return [(row["shard_id"], row["sequence_number"], row["sub_sequence"])
            for batch in reader.read(partition) for row in batch.to_pylist()]


def _events(reader: KinesisStreamReader, ranges: list) -> int:
    """What the batch's tasks read (as Spark runs them: each partition's read, in a worker)."""
    return sum(batch.num_rows for r in ranges for batch in reader.read(r))


def test_called_bare_as_pyspark_4_0_calls_it_the_reader_keeps_its_own_start(
        stream: Settings) -> None:
    """PySpark 4.0 calls latestOffset() without a start or a read limit: the reader goes on
    from the offset it last planned, or, restarted, the one Spark tells it of as an empty
    range; max_records_per_batch bounds every batch all the same."""
    _put(stream, 20)
    reader = KinesisStreamReader(SourceOptions.from_settings(stream, max_records_per_batch=10))
    start, planned = reader.initialOffset(), 0
    while (end := reader.latestOffset()) != start:
        batch = _events(reader, reader.partitions(start, end))
        assert 0 < batch <= 10
        planned += batch
        reader.commit(end)
        start = end
    assert planned == 20
    assert reader.initialOffset() == reader.initialOffset()  # asked twice for a new query

    restarted = _reader(stream)
    assert restarted.partitions(end, end) == []  # Spark 4.0's setLatestSeenOffset
    _put(stream, 5)
    assert _events(restarted, restarted.partitions(end, restarted.latestOffset())) == 5


def _stream_job(settings: Settings) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "propensity"), "stream", "--until-idle"],
        env={**os.environ, **settings.to_env()}, capture_output=True, text=True, timeout=300)


def test_the_job_refuses_a_checkpoint_of_another_stream(stack: Settings, tmp_path: Path
                                                        ) -> None:
    first = isolated(stack, tmp_path)
    _put(first, 10)
    done = _stream_job(first)
    assert done.returncode == 0, done.stderr[-3000:]
    second = with_fresh_stream(first)  # the same checkpoint directory
    _put(second, 10)
    refused = _stream_job(second)
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith(f"propensity: error: checkpoint {first.checkpoint_dir}: this "
                            f"checkpoint was written for stream {_identity(first)['arn']} "), \
        refused.stderr[-3000:]
    assert f"but the job reads {_identity(second)['arn']} created " in error
