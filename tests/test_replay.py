"""Replay into a real moto Kinesis: every valid event exactly once, invalid ones never."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from propensity import aws, events, kpl
from propensity.kinesis import KinesisWriter, ShardMap, list_shards, read_all, read_events
from propensity.ops.replay import replay
from propensity.ops.testing import FlakyKinesis, write_csv
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings
from tests.test_events import BASE

pytestmark = pytest.mark.integration


def _replay(settings: Settings, path: Path, kinesis=None, **options):
    kinesis = kinesis or aws.client("kinesis", settings)
    shard_map = ShardMap(list_shards(kinesis, settings.kinesis_stream))
    writer = KinesisWriter(kinesis, settings.kinesis_stream, sleep=lambda _: None)
    return replay(path, writer, shard_map, progress=False, **options)


def _expected(path: Path) -> pd.DataFrame:
    return events.validate_file(path).valid


@pytest.mark.parametrize(("events_per_record", "aggregate"), [(1, False), (7, False), (7, True)])
def test_bundled_sample_arrives_exactly_once_in_session_order(
        stream: Settings, events_per_record: int, aggregate: bool) -> None:
    summary = _replay(stream, MULTICAT_SAMPLE, speed=None, events_per_record=events_per_record,
                      aggregate=aggregate)
    expected = _expected(MULTICAT_SAMPLE)
    assert summary.read == 17434 == summary.sent + sum(summary.invalid.values())
    assert summary.sent == len(expected)
    assert summary.duplicates == expected["event_id"].duplicated().sum() > 0
    assert summary.records == (summary.sent if events_per_record == 1 else
                               pytest.approx(summary.sent / events_per_record, rel=0.05))

    records = [r["Data"] for _, r in read_all(aws.client("kinesis", stream), stream.kinesis_stream)]
    assert len(records) == summary.records
    assert all(kpl.is_aggregated(data) == aggregate for data in records)
    arrived = read_events(aws.client("kinesis", stream), stream.kinesis_stream)
    assert arrived.invalid.empty
    assert Counter(arrived.valid["event_id"]) == Counter(expected["event_id"])
    # Each session on one shard, its events in the order of the file.
    assert (arrived.valid.groupby("user_session")["shard_id"].nunique() == 1).all()
    file_order = {eid: i for i, eid in enumerate(expected["event_id"])}
    positions = arrived.valid.assign(pos=arrived.valid["event_id"].map(file_order))
    assert positions.groupby("user_session")["pos"].is_monotonic_increasing.all()


def test_the_command_sends_kpl_aggregated_records(stream: Settings) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "propensity"), "replay", str(MULTICAT_SAMPLE), "--max",
         "--limit", "300", "--events-per-record", "25", "--aggregate", "--json"],
        env={**os.environ, **stream.to_env()}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    records = [r["Data"] for _, r in read_all(aws.client("kinesis", stream), stream.kinesis_stream)]
    assert len(records) == summary["records"] < summary["sent"] / 10
    assert all(kpl.is_aggregated(data) for data in records)
    arrived = read_events(aws.client("kinesis", stream), stream.kinesis_stream)
    assert len(arrived.valid) == summary["sent"] and arrived.invalid.empty


def test_partial_putrecords_failures_are_retried(stream: Settings) -> None:
    flaky = FlakyKinesis(aws.client("kinesis", stream), throttled_calls=1, partial_calls=4)
    summary = _replay(stream, MULTICAT_SAMPLE, kinesis=flaky, speed=None, limit=3000)
    assert summary.retried == flaky.rejected_records > 0
    arrived = read_events(aws.client("kinesis", stream), stream.kinesis_stream)
    expected = _expected(MULTICAT_SAMPLE).head(3000)
    assert Counter(arrived.valid["event_id"]) == Counter(expected["event_id"])


def test_invalid_rows_are_counted_by_reason_and_never_sent(stream: Settings,
                                                           tmp_path: Path) -> None:
    good = list(BASE.values())
    rows = [
        good,
        {**BASE, "user_session": ""}.values(),
        {**BASE, "event_type": "click"}.values(),
        {**BASE, "price": "-2"}.values(),
        {**BASE, "price": "-3"}.values(),
        {**BASE, "event_time": "soon"}.values(),
        ["too", "few"],
        {**BASE, "user_id": "7"}.values(),
    ]
    path = write_csv(tmp_path / "mixed.csv.gz", [list(r) for r in rows])
    summary = _replay(stream, path, speed=None)
    assert summary.read == 8
    assert summary.sent == 2
    assert summary.invalid == {"missing_field": 1, "bad_event_type": 1, "negative_price": 2,
                               "bad_timestamp": 1, "malformed": 1}
    arrived = read_events(aws.client("kinesis", stream), stream.kinesis_stream)
    assert sorted(arrived.valid["user_id"]) == [7, 541312140]


def test_limit_and_pacing(stream: Settings, tmp_path: Path) -> None:
    # Five events two seconds apart at speed 4: the last is due 2 s after the first.
    rows = [{**BASE, "event_time": f"2019-10-01 00:00:{2 * i:02d} UTC"}.values()
            for i in range(6)]
    path = write_csv(tmp_path / "paced.csv", [list(r) for r in rows])
    started = time.monotonic()
    summary = _replay(stream, path, speed=4.0, limit=5)
    elapsed = time.monotonic() - started
    assert (summary.read, summary.sent) == (5, 5)
    assert 1.9 <= elapsed < 10
