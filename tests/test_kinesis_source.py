"""The Kinesis source's offsets name their stream: a checkpoint written for another stream (or
for a stream since deleted and re-created under the same name) is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from propensity import aws
from propensity.settings import Settings
from propensity.testing import isolated, with_fresh_stream
from streaming.kinesis_source import CheckpointStreamMismatch, KinesisStreamReader, SourceOptions
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
    assert sum(len(r.records or []) for r in reader.partitions(initial, latest)) == 20

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
    _put(stream, 5)
    restarted = _reader(stream)  # a new query run on the old checkpoint
    assert restarted.partitions(old_initial, old_latest)  # re-planned from Kinesis
    latest = restarted.latestOffset(old_latest)
    assert latest["stream"] == _identity(stream)  # recorded from then on
    ranges = restarted.partitions(old_latest, latest)
    assert sum(len(r.records or []) for r in ranges) == 5
    restarted.commit(latest)


def _records(ranges: list) -> int:
    return sum(len(r.records or []) for r in ranges)


def test_called_bare_as_pyspark_4_0_calls_it_the_reader_keeps_its_own_start(
        stream: Settings) -> None:
    """PySpark 4.0 calls latestOffset() without a start or a read limit: the reader goes on
    from the offset it last planned, or, restarted, the one Spark tells it of as an empty
    range; max_records_per_batch bounds every batch all the same."""
    _put(stream, 20)
    reader = KinesisStreamReader(SourceOptions.from_settings(stream, max_records_per_batch=10))
    start, planned = reader.initialOffset(), 0
    while (end := reader.latestOffset()) != start:
        batch = _records(reader.partitions(start, end))
        assert 0 < batch <= 10
        planned += batch
        reader.commit(end)
        start = end
    assert planned == 20
    assert reader.initialOffset() == reader.initialOffset()  # asked twice for a new query

    restarted = _reader(stream)
    assert restarted.partitions(end, end) == []  # Spark 4.0's setLatestSeenOffset
    _put(stream, 5)
    assert _records(restarted.partitions(end, restarted.latestOffset())) == 5


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
