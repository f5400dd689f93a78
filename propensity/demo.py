"""`propensity demo`: the system end to end on real clickstream, on this machine.

It grows with each capability. Today: a fresh local stack, the bundled REES46 sample replayed
into Kinesis, and what arrived, read back from every shard and checked against what was sent.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from propensity import aws, events
from propensity.kinesis import KinesisWriter, ShardMap, list_shards, read_all
from propensity.replay import replay
from propensity.settings import Settings
from propensity.stack import LocalStack

EVENTS_PER_RECORD = 10  # moto takes ~2k records/s; packing keeps the demo quick


@dataclass
class Arrivals:
    """What a stream holds, read back through the event contract."""

    records: int = 0
    per_shard: Counter[str] = field(default_factory=Counter)
    event_ids: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    sessions: set[str] = field(default_factory=set)
    users: set[int] = field(default_factory=set)
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None

    @property
    def events(self) -> int:
        return sum(self.event_ids.values())

    def format(self) -> str:
        shards = ", ".join(f"{s}: {n:,}" for s, n in sorted(self.per_shard.items()))
        types = ", ".join(f"{t}: {n:,}" for t, n in self.by_type.most_common())
        return "\n".join([
            f"  records     {self.records:>10,}  ({shards})",
            f"  events      {self.events:>10,}  ({types})",
            f"  distinct    {len(self.event_ids):>10,}  events by identity",
            f"  sessions    {len(self.sessions):>10,}  of {len(self.users):,} users",
            f"  time range  {self.first} .. {self.last}",
            f"  invalid     {sum(self.invalid.values()):>10,}",
        ])


def read_arrivals(settings: Settings) -> Arrivals:
    arrivals = Arrivals()
    for shard_id, record in read_all(aws.client("kinesis", settings), settings.kinesis_stream):
        arrivals.records += 1
        batch = events.validate(events.frame_from_json(events.split_record(record["Data"])))
        valid = batch.valid
        arrivals.per_shard[shard_id] += len(valid)
        arrivals.event_ids.update(valid["event_id"])
        arrivals.by_type.update(valid["event_type"])
        arrivals.invalid.update(batch.reason_counts())
        arrivals.sessions.update(valid["user_session"])
        arrivals.users.update(valid["user_id"])
        if len(valid):
            first, last = valid["event_time"].min(), valid["event_time"].max()
            arrivals.first = first if arrivals.first is None else min(arrivals.first, first)
            arrivals.last = last if arrivals.last is None else max(arrivals.last, last)
    return arrivals


def run_demo(settings: Settings, file: Path, keep_running: bool = False) -> int:
    stack = LocalStack(settings.home / "demo")
    stack.down()  # a fresh stream every time: what arrives is this run's alone
    print("[1/3] starting the local stack (redis-server, moto) ...")
    started = time.monotonic()
    demo_settings = stack.up()
    print(f"      up in {time.monotonic() - started:.1f} s: redis {demo_settings.redis}, "
          f"AWS endpoint {demo_settings.aws_endpoint_url}")
    try:
        print(f"[2/3] replaying {file} into Kinesis ...")
        kinesis = aws.client("kinesis", demo_settings)
        sent = replay(file, KinesisWriter(kinesis, demo_settings.kinesis_stream),
                      ShardMap(list_shards(kinesis, demo_settings.kinesis_stream)),
                      events_per_record=EVENTS_PER_RECORD)
        print(sent.format())
        print("[3/3] reading the stream back from every shard ...")
        arrived = read_arrivals(demo_settings)
        print(arrived.format())
        distinct_sent = sent.sent - sent.duplicates
        if arrived.events != sent.sent or len(arrived.event_ids) != distinct_sent:
            print(f"MISMATCH: sent {sent.sent:,} events ({distinct_sent:,} distinct), "
                  f"{arrived.events:,} arrived ({len(arrived.event_ids):,} distinct)")
            return 1
        print(f"every one of the {sent.sent:,} valid events arrived exactly once")
        return 0
    finally:
        if keep_running:
            print("the demo stack keeps running; attach a shell with:")
            for name, value in sorted(demo_settings.to_env().items()):
                print(f"  export {name}={shlex.quote(value)}")
        else:
            stack.down()
            print("demo stack stopped")
