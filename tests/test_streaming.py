"""The streaming job against real Kinesis (moto server), Spark (local[2]), Redis and Feast."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from propensity import aws, events, feature_repo
from propensity import features as F
from propensity.kinesis import KinesisWriter, ShardMap, list_shards
from propensity.lake import list_objects, read_table
from propensity.ops.demo import check_online
from propensity.ops.live_demo import start_stream_job
from propensity.ops.replay import ReplaySummary, replay
from propensity.ops.testing import isolated, write_csv
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.streaming.checkpoint import LAYOUT_FILE, CheckpointLayoutMismatch
from propensity.streaming.job import run, start
from propensity.streaming.options import StreamOptions
from propensity.streaming.sessionize import SessionizeConfig
from tests.feature_oracle import assert_same_snapshots, expected_snapshots
from tests.test_events import BASE
from tests.test_kpl import aggregated

pytestmark = pytest.mark.integration
COSMETICS = Path(__file__).parent / "data" / "cosmetics-2019-11-01-head6000.csv.gz"


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_session("propensity-tests", "local[2]")
    yield session
    session.stop()


@pytest.fixture
def pipeline(stack: Settings, tmp_path: Path) -> Settings:
    return isolated(stack, tmp_path)


def send(settings: Settings, path: Path, speed: float | None = None, **options
         ) -> ReplaySummary:
    kinesis = aws.client("kinesis", settings)
    return replay(path, KinesisWriter(kinesis, settings.kinesis_stream),
                  ShardMap(list_shards(kinesis, settings.kinesis_stream)), speed=speed,
                  progress=False, **options)


def read(settings: Settings, uri: str) -> pd.DataFrame:
    table = read_table(settings, uri)
    return pd.DataFrame() if table is None else table.to_pandas()


def archive(settings: Settings, view: str) -> pd.DataFrame:
    from propensity.lake import archive_uri

    return read(settings, archive_uri(settings, view))


def valid_events(path: Path) -> pd.DataFrame:
    return events.validate_file(path).valid


def online(settings: Settings, view: str, names: tuple[str, ...], rows: list[dict]
           ) -> pd.DataFrame:
    store = feature_repo.store(settings)
    return store.get_online_features(features=[f"{view}:{n}" for n in names],
                                     entity_rows=rows).to_df()


def test_features_equal_the_recomputation_and_feast_serves_the_latest(
        spark: SparkSession, pipeline: Settings) -> None:
    # Not the local defaults (2 partitions, 64 buckets): the settings reach Spark and the
    # parse stage, and every partition's task writes its own objects.
    pipeline = pipeline.model_copy(update={"stream_state_partitions": 3,
                                           "stream_session_buckets": 24})
    sent = send(pipeline, COSMETICS, events_per_record=10)
    run(pipeline, StreamOptions(until_idle=True), spark)

    expected = expected_snapshots(valid_events(COSMETICS), pipeline.session_timeout_s)
    assert sent.sent == 5995 and len(expected) == 5995 - sent.duplicates
    sessions = archive(pipeline, F.SESSION_VIEW)
    products = archive(pipeline, F.SESSION_PRODUCT_VIEW)
    assert_same_snapshots(sessions.merge(products, on=[F.SESSION_ID, "event_id",
                                                       F.EVENT_TIMESTAMP]), expected)

    lake = read(pipeline, pipeline.events_uri)
    assert sorted(lake["event_id"]) == sorted(expected["event_id"])  # one row per event
    assert read(pipeline, pipeline.quarantine_uri).empty  # replay sends valid events only
    # Objects carry the query's id: a later run on a new checkpoint cannot overwrite them.
    query = json.loads((Path(pipeline.checkpoint_dir) / "metadata").read_text())["id"]
    names = [Path(path).name for path, _ in list_objects(pipeline, pipeline.events_uri)]
    assert names and all(n.startswith(f"batch-{query.replace('-', '')[:8]}-") for n in names)
    # ... and the partition whose task wrote them: all three wrote (5,066 sessions).
    assert {n.removesuffix(".parquet").rsplit("-", 1)[1] for n in names} == {
        "00000", "00001", "00002"}
    checkpoint = Path(pipeline.checkpoint_dir)
    assert json.loads((checkpoint / LAYOUT_FILE).read_text()) == {
        "state_partitions": 3, "session_buckets": 24}
    spark_conf = json.loads((checkpoint / "offsets" / "0").read_text().splitlines()[1])["conf"]
    assert spark_conf["spark.sql.shuffle.partitions"] == "3"
    # Another parallelism on this checkpoint: refused before Spark is asked for anything.
    with pytest.raises(CheckpointLayoutMismatch, match="PROPENSITY_STREAM_STATE_PARTITIONS=4"):
        run(pipeline.model_copy(update={"stream_state_partitions": 4}),
            StreamOptions(until_idle=True), spark)

    latest = expected.sort_values(F.EVENT_TIMESTAMP).groupby(F.SESSION_ID).tail(1)
    got = online(pipeline, F.SESSION_VIEW, F.SESSION_FEATURE_NAMES,
                 [{F.SESSION_ID: s} for s in latest[F.SESSION_ID]])
    want = latest[[F.SESSION_ID, *F.SESSION_FEATURE_NAMES]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)

    latest_products = expected.sort_values(F.EVENT_TIMESTAMP).groupby(
        [F.SESSION_ID, F.PRODUCT_ID]).tail(1).head(500)
    got = online(pipeline, F.SESSION_PRODUCT_VIEW, F.SESSION_PRODUCT_FEATURE_NAMES,
                 latest_products[[F.SESSION_ID, F.PRODUCT_ID]].to_dict("records"))
    want = latest_products[[F.SESSION_ID, F.PRODUCT_ID, *F.SESSION_PRODUCT_FEATURE_NAMES]]
    pd.testing.assert_frame_equal(got[want.columns], want.reset_index(drop=True),
                                  check_dtype=False)


def test_the_bundled_sample_aggregated_by_the_kpl_gives_the_recomputed_features(
        spark: SparkSession, pipeline: Settings) -> None:
    """The demo's check, replay -> stream -> Feast, on the bundled real sample (17,434 events)
    sent as KPL aggregated records: Feast serves every session's features as the fold over the
    events computes them."""
    sent = send(pipeline, MULTICAT_SAMPLE, events_per_record=25, aggregate=True)
    assert sent.records < sent.sent / 20
    run(pipeline, StreamOptions(until_idle=True), spark)
    assert check_online(pipeline, MULTICAT_SAMPLE, sent.sent, wait_s=0)


def test_kpl_aggregated_records_count_every_event_once_across_a_crash(
        spark: SparkSession, pipeline: Settings) -> None:
    """The sample as KPL aggregated records, then one whose digest broke on the way: every
    event is counted, the broken record is quarantined whole. Then the crash that matters:
    after a batch's sinks wrote, before Spark recorded its commit. The restarted query runs
    the batch again, its records read anew from Kinesis; their events get the same positions,
    so the sinks overwrite what they wrote and nothing counts twice."""
    sent = send(pipeline, COSMETICS, events_per_record=50, aggregate=True)
    assert sent.records < sent.sent / 40  # aggregated records of up to 50 user records
    broken = aggregated([_row_json(f"2019-11-01 00:00:0{i} UTC", "broken") for i in range(3)])
    broken = broken[:-1] + bytes([broken[-1] ^ 0xFF])  # its MD5 digest damaged
    KinesisWriter(aws.client("kinesis", pipeline), pipeline.kinesis_stream).put(
        [("broken", broken)])
    options = StreamOptions(until_idle=True, max_records_per_batch=40)
    run(pipeline, options, spark)
    planned, committed = _batches(pipeline)
    assert planned == committed >= 3
    commits = Path(pipeline.checkpoint_dir) / "commits"
    for name in (f"{committed - 1}", f".{committed - 1}.crc"):
        (commits / name).unlink(missing_ok=True)
    run(pipeline, options, spark)
    assert _batches(pipeline) == (planned, committed)  # the last batch ran again, no other

    expected = expected_snapshots(valid_events(COSMETICS), pipeline.session_timeout_s)
    sessions = archive(pipeline, F.SESSION_VIEW)
    assert not sessions["event_id"].duplicated().any()
    assert_same_snapshots(sessions.merge(archive(pipeline, F.SESSION_PRODUCT_VIEW),
                                         on=[F.SESSION_ID, "event_id", F.EVENT_TIMESTAMP]),
                          expected)
    assert sorted(read(pipeline, pipeline.events_uri)["event_id"]) == sorted(expected["event_id"])
    latest = expected.sort_values(F.EVENT_TIMESTAMP).groupby(F.SESSION_ID).tail(1)
    got = online(pipeline, F.SESSION_VIEW, ("event_count",),
                 [{F.SESSION_ID: s} for s in latest[F.SESSION_ID]])
    assert got["event_count"].tolist() == latest["event_count"].tolist()
    quarantine = read(pipeline, pipeline.quarantine_uri)
    assert quarantine[events.REASON].tolist() == ["aggregate_digest_mismatch"]
    assert base64.b64decode(quarantine[events.PAYLOAD][0]) == broken
    assert quarantine[events.DETAIL][0] == ("the MD5 digest does not match the protobuf message"
                                            " (payload: the whole Kinesis record, base64)")
    assert quarantine["sub_sequence"].tolist() == [0]


def _row_json(time: str, session: str) -> bytes:
    return orjson.dumps(dict(zip(events.REES46_COLUMNS, _row(time, session), strict=True)))


def _row(time: str, session: str, event_type: str = "view", product: int = 1,
         price: str = "5.0") -> list[str]:
    return list({**BASE, "event_time": time, "user_session": session, "event_type": event_type,
                 "product_id": str(product), "price": price}.values())


def test_invalid_duplicate_and_late_events(spark: SparkSession, pipeline: Settings,
                                           tmp_path: Path) -> None:
    first = write_csv(tmp_path / "first.csv", [
        _row("2019-10-01 12:00:00 UTC", "a"),
        _row("2019-10-01 12:00:05 UTC", "a", "cart"),
        _row("2019-10-01 12:00:05 UTC", "a", "cart"),  # a repeated event
        _row("2019-10-01 12:30:00 UTC", "a"),
        _row("2019-10-01 12:30:00 UTC", "b"),
    ])
    # What a broken producer might put on the stream (replay itself never sends these).
    malformed = [b"not json", orjson.dumps({**BASE, "event_type": "click"}),
                 _row_json("2019-10-01 12:30:10 UTC", "a") + b"\n{broken"]
    # Watermarks are now 12:30 minus the delay (10 min): 11:00 is late, 12:29 is not.
    late = write_csv(tmp_path / "late.csv", [
        _row("2019-10-01 11:00:00 UTC", "a", "purchase"),
        _row("2019-10-01 12:29:00 UTC", "b", "cart"),
        _row("2019-10-01 12:00:05 UTC", "a", "cart"),  # the repeat again, now also late
    ])
    query, listener = start(pipeline, StreamOptions(trigger_s=0.5), spark)
    try:
        send(pipeline, first)
        KinesisWriter(aws.client("kinesis", pipeline), pipeline.kinesis_stream).put(
            [("a", data) for data in malformed])
        wait_for(lambda: len(archive(pipeline, F.SESSION_VIEW)) == 5
                 and len(read(pipeline, pipeline.quarantine_uri)) == 3)
        send(pipeline, late)
        wait_for(lambda: len(read(pipeline, pipeline.quarantine_uri)) == 5
                 and len(archive(pipeline, F.SESSION_VIEW)) == 6)
    finally:
        query.stop()
        spark.streams.removeListener(listener)

    sessions = archive(pipeline, F.SESSION_VIEW).sort_values(F.EVENT_TIMESTAMP)
    a = sessions[sessions[F.SESSION_ID] == "a"]
    assert a["event_count"].tolist() == [1, 2, 3, 4]  # the repeat once, the late one never
    assert a["purchase_count"].max() == 0
    b = sessions[sessions[F.SESSION_ID] == "b"]
    assert b["event_count"].tolist() == [1, 2]
    # b's cart (12:29) came after its view (12:30): counted, but never stamped before 12:30.
    assert b[F.EVENT_TIMESTAMP].is_monotonic_increasing
    assert b["last_event_type"].tolist() == ["view", "view"]
    quarantine = read(pipeline, pipeline.quarantine_uri)
    assert sorted(quarantine[events.REASON]) == [
        "bad_event_type", "late", "late", "malformed", "malformed"]
    assert set(quarantine[events.PAYLOAD]) >= {"not json", "{broken"}
    late_payloads = quarantine.loc[quarantine[events.REASON] == "late", events.PAYLOAD]
    late_events = events.validate(events.frame_from_json(list(late_payloads))).valid
    assert sorted(late_events["event_type"]) == ["cart", "purchase"]


def wait_for(condition, timeout_s: float = 120, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the streaming job did not get there in time")
        time.sleep(poll_s)


def test_idle_sessions_leave_state(spark: SparkSession, stack: Settings,
                                   tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path).model_copy(update={
        "session_timeout_s": 60, "watermark_delay_s": 0})
    early = [_row(f"2019-10-01 10:00:{s % 60:02d} UTC", f"early-{s}") for s in range(300)]
    send(settings, write_csv(tmp_path / "early.csv", early))
    run(settings, StreamOptions(until_idle=True), spark)
    assert _state_rows(spark, settings) == 300
    # An hour later (event time), traffic reaches every bucket; the early sessions are idle.
    later = [_row("2019-10-01 11:00:00 UTC", f"later-{s}") for s in range(300)]
    send(settings, write_csv(tmp_path / "later.csv", later))
    run(settings, StreamOptions(until_idle=True), spark)
    held = (spark.read.format("statestore").option("stateVarName", "sessions")
            .load(settings.checkpoint_dir).select("user_map_key.session_id").toPandas())
    assert sorted(held["session_id"]) == sorted(f"later-{s}" for s in range(300))


def _state_rows(spark: SparkSession, settings: Settings) -> int:
    """Sessions held in the stateful operator's map state, read with Spark's state reader."""
    return (spark.read.format("statestore").option("stateVarName", "sessions")
            .load(settings.checkpoint_dir).count())


def _batches(settings: Settings) -> tuple[int, int]:
    """(planned, committed) micro-batches in the checkpoint."""
    checkpoint = Path(settings.checkpoint_dir)
    count = [len([p for p in (checkpoint / d).glob("[0-9]*")]) if (checkpoint / d).exists()
             else 0 for d in ("offsets", "commits")]
    return count[0], count[1]


def test_sigkill_mid_replay_then_restart_counts_every_event_once(pipeline: Settings,
                                                                 tmp_path: Path) -> None:
    log = tmp_path / "stream.log"
    job = start_stream_job(pipeline, log, "--max-records-per-batch", "40", trigger_s=0.5)
    # The replay starts once the query runs (its checkpoint metadata exists), however long
    # Spark takes to start on a busy machine. Its first half (600 records, at least 15
    # batches of 40) is on the stream before the kill, its second half after it, whatever
    # the machine's speed: the kill always lands in the middle of the replay.
    first, second = _halves(COSMETICS, tmp_path)
    wait_for(lambda: (Path(pipeline.checkpoint_dir) / "metadata").exists(), timeout_s=180)
    replaying = threading.Thread(target=send, args=(pipeline, first),
                                 kwargs={"speed": 700.0, "events_per_record": 5})
    replaying.start()
    try:
        # Kill while a batch is under way (planned, not committed) after two have committed.
        wait_for(lambda: _batches(pipeline)[1] >= 2 and
                 _batches(pipeline)[0] > _batches(pipeline)[1], timeout_s=300, poll_s=0.02)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    killed_at = _batches(pipeline)
    replaying.join()
    send(pipeline, second, events_per_record=5)
    restarted = start_stream_job(pipeline, log, "--until-idle", append=True)
    assert restarted.wait(300) == 0, log.read_text()[-3000:]
    assert _batches(pipeline)[1] > killed_at[1]

    expected = expected_snapshots(valid_events(COSMETICS), pipeline.session_timeout_s)
    sessions = archive(pipeline, F.SESSION_VIEW)
    assert not sessions["event_id"].duplicated().any()  # nothing counted twice
    assert_same_snapshots(sessions.merge(archive(pipeline, F.SESSION_PRODUCT_VIEW),
                                         on=[F.SESSION_ID, "event_id", F.EVENT_TIMESTAMP]),
                          expected)  # nothing lost, every feature right
    assert sorted(read(pipeline, pipeline.events_uri)["event_id"]) == sorted(expected["event_id"])
    latest = expected.sort_values(F.EVENT_TIMESTAMP).groupby(F.SESSION_ID).tail(1)
    got = online(pipeline, F.SESSION_VIEW, ("event_count",),
                 [{F.SESSION_ID: s} for s in latest[F.SESSION_ID]])
    assert got["event_count"].tolist() == latest["event_count"].tolist()


def _halves(path: Path, folder: Path) -> tuple[Path, Path]:
    """The first 3,000 events of a CSV file and the rest, as two CSV files."""
    with gzip.open(path, "rt") as csv_file:
        lines = csv_file.read().splitlines(keepends=True)
    halves = (folder / "first.csv", folder / "second.csv")
    halves[0].write_text("".join(lines[:3001]))
    halves[1].write_text(lines[0] + "".join(lines[3001:]))
    return halves


def test_resharding_keeps_every_event_once(spark: SparkSession, pipeline: Settings,
                                           tmp_path: Path) -> None:
    """Parents are read to their end before their children. (moto also copies a parent's
    records into its children, which the job's de-duplication by identity absorbs.)"""
    halves = _halves(COSMETICS, tmp_path)
    send(pipeline, halves[0], events_per_record=5)
    run(pipeline, StreamOptions(until_idle=True), spark)
    kinesis = aws.client("kinesis", pipeline)
    kinesis.update_shard_count(StreamName=pipeline.kinesis_stream, TargetShardCount=4,
                               ScalingType="UNIFORM_SCALING")
    assert len(list_shards(kinesis, pipeline.kinesis_stream)) == 6
    send(pipeline, halves[1], events_per_record=5)
    run(pipeline, StreamOptions(until_idle=True), spark)

    expected = expected_snapshots(valid_events(COSMETICS), pipeline.session_timeout_s)
    sessions = archive(pipeline, F.SESSION_VIEW)
    assert_same_snapshots(sessions.merge(archive(pipeline, F.SESSION_PRODUCT_VIEW),
                                         on=[F.SESSION_ID, "event_id", F.EVENT_TIMESTAMP]),
                          expected)


def test_expiry_scans_every_quarter_of_the_timeout_at_most_every_5_minutes() -> None:
    assert SessionizeConfig(session_timeout_s=1800, watermark_delay_s=600).scan_interval_s == 300
    assert SessionizeConfig(session_timeout_s=120, watermark_delay_s=30).scan_interval_s == 30
    assert SessionizeConfig(session_timeout_s=2, watermark_delay_s=0).scan_interval_s == 1
