"""The chaos suite's scenarios of the streaming job (ops/bench/chaos.py): stream-kill,
stream-redis and kinesis-throttle, each judged by what reached the lake and Redis against what
was sent, exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from propensity import aws, events
from propensity.kinesis import KinesisWriter, ShardMap, list_shards, read_events
from propensity.lake import read_table
from propensity.ops.bench.verdicts import (
    Outcome,
)
from propensity.ops.demo import check_online
from propensity.ops.live_demo import start_stream_job, stop_stream_job, wait_for_first_batch
from propensity.ops.replay import ReplaySummary, replay
from propensity.ops.testing import (
    RedisProcess,
    isolated,
)
from propensity.ops.throttling_proxy import ThrottlingProxy
from propensity.settings import Settings
from propensity.streaming.destinations import REDIS_RETRY_LOG


def committed_batches(checkpoint_dir: str) -> int:
    commits = Path(checkpoint_dir) / "commits"
    return len(list(commits.glob("[0-9]*"))) if commits.exists() else 0


def start_job(settings: Settings, log: Path) -> subprocess.Popen:
    job = start_stream_job(settings, log)
    wait_for_first_batch(job, log)
    return job


# The share of a replay's records held back until its scenario has made its faults: on a slow
# machine the replay could otherwise end before a restarted job has run a batch to kill.
HELD_BACK_SHARE = 0.1
# How long a scenario waits for a batch once the replay is held and the job has nothing left
# to read (a restarted job whose killed batch had been committed): it acts on an idle job then.
IDLE_WAIT_S = 60


class _HeldBackWriter:
    """A KinesisWriter whose replay stops before its last records (HELD_BACK_SHARE of those
    expected) until released, so that a scenario's faults all fall inside the replay."""

    def __init__(self, inner: KinesisWriter, expected_records: int) -> None:
        self.inner = inner
        self.hold_from = int(expected_records * (1 - HELD_BACK_SHARE))
        self.records = 0
        self.holding = threading.Event()  # the replay waits at the hold
        self.released = threading.Event()

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def put(self, records: list) -> None:
        if self.records + len(records) > self.hold_from and not self.released.is_set():
            self.holding.set()
            self.released.wait()
        self.inner.put(records)
        self.records += len(records)


@dataclass
class _Replay:
    thread: threading.Thread
    writer: _HeldBackWriter
    sent: dict  # "summary": its ReplaySummary, once done

    def finish(self) -> ReplaySummary:
        """Release the held-back records and wait for the replay's end."""
        self.writer.released.set()
        self.thread.join()
        return self.sent["summary"]


_EVENTS_PER_RECORD = 5


def _replay_in_thread(settings: Settings, file: Path, speed: float) -> _Replay:
    """The file replayed into the settings' stream at `speed` by a thread (started), its last
    records held back until `finish`."""
    kinesis = aws.client("kinesis", settings)
    expected = -(-len(events.validate_file(file).valid) // _EVENTS_PER_RECORD)
    writer = _HeldBackWriter(KinesisWriter(kinesis, settings.kinesis_stream), expected)
    sent: dict[str, ReplaySummary] = {}

    def send() -> None:
        sent["summary"] = replay(file, writer, ShardMap(list_shards(kinesis,
                                                                    settings.kinesis_stream)),
                                 speed=speed, events_per_record=_EVENTS_PER_RECORD,
                                 progress=False)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return _Replay(thread, writer, sent)


# The wall-clock lag of a shard (throttled, or beside a CPU hog) that the stream scenarios'
# jobs tolerate before an event counts as late: a replay at `speed` makes it `speed` times as
# long in event time. The scenarios count what their fault did; lateness is test_streaming's.
WALL_LAG_S = 60


def _for_replay_at(settings: Settings, speed: float) -> Settings:
    """The settings with a watermark that lets a shard fall WALL_LAG_S behind a replay at
    `speed` (once, under a hog, a throttled shard's events came 3 s of wall clock behind the
    other's: 10 minutes of event time at 200x, and were quarantined as late)."""
    delay = max(settings.watermark_delay_s, int(speed * WALL_LAG_S))
    return settings.model_copy(update={"watermark_delay_s": delay})


def _wait_for_batches(settings: Settings, more: int, replaying: _Replay) -> None:
    """Until `more` batches have been committed since now, or, once the replay waits at its
    hold, one (or IDLE_WAIT_S without one: the job has nothing left to read)."""
    start = committed_batches(settings.checkpoint_dir)
    held_since: float | None = None
    while (done := committed_batches(settings.checkpoint_dir) - start) < more:
        if replaying.writer.holding.is_set():
            held_since = held_since or time.monotonic()
            if done >= 1 or time.monotonic() - held_since > IDLE_WAIT_S:
                return
        time.sleep(0.05)


def lake_event_ids(settings: Settings) -> pa.ChunkedArray:
    """The event ids in the settings' event lake, one per row."""
    lake = read_table(settings, settings.events_uri)
    return pa.chunked_array([], pa.string()) if lake is None else lake.column("event_id")


def _exactly_once(settings: Settings, summary: ReplaySummary) -> dict:
    """What the lake holds of the replay: lost and doubled events (both should be 0), and
    where in the stream any lost events are."""
    ids = lake_event_ids(settings)
    in_lake = len(pc.unique(ids))
    distinct_sent = summary.sent - summary.duplicates
    figures = {"events sent": summary.sent, "distinct": distinct_sent,
               "lost": distinct_sent - in_lake, "counted twice": len(ids) - in_lake}
    if figures["lost"]:
        figures["lost, where"] = where_missing(settings, set(ids.to_pylist()))
        figures["batches committed"] = committed_batches(settings.checkpoint_dir)
        figures["last planned offsets"] = _last_offsets(settings.checkpoint_dir)
    return figures


def _last_offsets(checkpoint_dir: str) -> dict | None:
    """The Kinesis positions of the checkpoint's last planned batch (its offset log's last
    line), or None before the first."""
    planned = sorted((Path(checkpoint_dir) / "offsets").glob("[0-9]*"), key=lambda p: int(p.name))
    if not planned:
        return None
    return json.loads(planned[-1].read_text().strip().splitlines()[-1]).get("shards")


def where_missing(settings: Settings, in_lake: set[str]) -> dict:
    """Per shard, the stream's events missing from the lake: how many, and the first and last
    record sequence numbers holding them (none in the stream: the replay never sent them)."""
    stream = read_events(aws.client("kinesis", settings), settings.kinesis_stream).valid
    missing = stream[~stream["event_id"].isin(in_lake)]
    return {shard: {"events": len(rows), "records": rows["sequence_number"].nunique(),
                    "first": rows["sequence_number"].iloc[0],
                    "last": rows["sequence_number"].iloc[-1]}
            for shard, rows in missing.groupby("shard_id")} or {"in the stream": 0}


def _nothing_lost(figures: dict) -> bool:
    return figures["lost"] == 0 and figures["counted twice"] == 0


def stream_kill(settings: Settings, file: Path, kills: int, speed: float,
                log: Path) -> Outcome:
    settings = _for_replay_at(settings, speed)
    job = start_job(settings, log)
    replaying = _replay_in_thread(settings, file, speed)
    done_kills = 0
    try:
        for _ in range(kills):
            _wait_for_batches(settings, 2, replaying)
            os.killpg(job.pid, signal.SIGKILL)  # no goodbye: as a node loss would
            job.wait()
            done_kills += 1
            job = start_stream_job(settings, log)
        summary = replaying.finish()
    finally:
        stop_stream_job(job)
    finish = subprocess.run([sys.executable, "-m", "propensity.ops.cli", "stream", "--until-idle"],
                            env={**os.environ, **settings.to_env()}, capture_output=True,
                            timeout=600)
    figures = {"kills": done_kills, **_exactly_once(settings, summary)}
    figures["online features equal"] = check_online(settings, file, summary.sent, wait_s=30)
    return Outcome("stream-kill", finish.returncode == 0 and done_kills == kills and
                   _nothing_lost(figures) and figures["online features equal"], figures)


def stream_redis(settings: Settings, file: Path, folder: Path, outage_s: float, speed: float,
                 log: Path) -> Outcome:
    """Redis (durable: AOF, fsync always) SIGKILLed under the running job and started again
    `outage_s` later: the job must neither die nor lose an event, and catch up by itself."""
    server = RedisProcess(folder / "stream-redis", durable=True)
    server.start()
    local = isolated(_for_replay_at(settings, speed).model_copy(
        update={"redis": server.connection_string}), folder / "stream-redis")
    try:
        job = start_job(local, log)
        try:
            replaying = _replay_in_thread(local, file, speed)
            _wait_for_batches(local, 3, replaying)
            server.stop()
            time.sleep(outage_s)
            server.start()
            summary = replaying.finish()
            replayed = time.monotonic()
            online_ok = check_online(local, file, summary.sent, wait_s=120)
            caught_up_s = time.monotonic() - replayed
            alive = job.poll() is None
        finally:
            stop_stream_job(job)
    finally:
        server.stop()
    retried = log.read_text(errors="replace").count(REDIS_RETRY_LOG)
    figures = {"outage s": outage_s, "job survived": alive,
               "Redis writes retried": retried, **_exactly_once(local, summary),
               "online features equal": online_ok,
               "caught up s after the replay": round(caught_up_s, 1)}
    return Outcome("stream-redis", alive and retried > 0 and online_ok
                   and _nothing_lost(figures), figures)


# Kinesis limits hit on a share of calls: per-shard reads and writes, and the control plane.
THROTTLED_SHARES = {"GetRecords": 0.3, "PutRecords": 0.2, "GetShardIterator": 0.3,
                    "ListShards": 0.2}


def kinesis_throttle(settings: Settings, file: Path, folder: Path, speed: float,
                     log: Path) -> Outcome:
    """The job and the replay reach Kinesis (and S3) through a proxy that throttles a share
    of their calls as Kinesis does: nothing lost or doubled, online features equal."""
    local = isolated(_for_replay_at(settings, speed), folder / "kinesis-throttle")
    with ThrottlingProxy(str(settings.aws_endpoint_url), THROTTLED_SHARES) as proxy:
        through = local.model_copy(update={"aws_endpoint_url": proxy.url})
        job = start_job(through, log)
        try:
            summary = _replay_in_thread(through, file, speed).finish()
            online_ok = check_online(through, file, summary.sent, wait_s=120)
            alive = job.poll() is None
        finally:
            stop_stream_job(job)
        throttled = dict(proxy.throttled)
        calls = dict(proxy.counts)
    figures = {"throttled calls": {op: f"{throttled.get(op, 0)}/{calls.get(op, 0)}"
                                   for op in THROTTLED_SHARES},
               "job survived": alive, **_exactly_once(local, summary),
               "online features equal": online_ok}
    return Outcome("kinesis-throttle", alive and online_ok and _nothing_lost(figures)
                   and all(throttled.get(op, 0) > 0 for op in ("GetRecords", "PutRecords")),
                   figures)
