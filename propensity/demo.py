"""`propensity demo`: the system end to end on real clickstream, on this machine.

It grows with each capability. Today: a fresh local stack, the bundled REES46 sample replayed
into Kinesis, and what arrived, read back from every shard and checked against what was sent.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from propensity import aws, events
from propensity.kinesis import KinesisWriter, ShardMap, list_shards, read_events
from propensity.replay import replay
from propensity.settings import Settings
from propensity.stack import LocalStack

EVENTS_PER_RECORD = 10  # moto takes ~2k records/s; packing keeps the demo quick


def describe_arrivals(arrived: events.Validated) -> str:
    """A short account of what a stream holds (see kinesis.read_events)."""
    valid = arrived.valid
    shards = valid.groupby("shard_id").size()
    types = valid["event_type"].value_counts()
    return "\n".join([
        f"  records     {len(valid[['shard_id', 'sequence_number']].drop_duplicates()):>10,}  ("
        + ", ".join(f"{s}: {n:,} events" for s, n in shards.items()) + ")",
        f"  events      {len(valid):>10,}  ("
        + ", ".join(f"{t}: {n:,}" for t, n in types.items()) + ")",
        f"  distinct    {valid['event_id'].nunique():>10,}  events by identity",
        f"  sessions    {valid['user_session'].nunique():>10,}  of "
        f"{valid['user_id'].nunique():,} users",
        f"  time range  {valid['event_time'].min()} .. {valid['event_time'].max()}",
        f"  invalid     {len(arrived.invalid):>10,}",
    ])


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
        arrived = read_events(kinesis, demo_settings.kinesis_stream)
        print(describe_arrivals(arrived))
        distinct_sent = sent.sent - sent.duplicates
        got, distinct_got = len(arrived.valid), arrived.valid["event_id"].nunique()
        if (got, distinct_got) != (sent.sent, distinct_sent) or len(arrived.invalid):
            print(f"MISMATCH: sent {sent.sent:,} events ({distinct_sent:,} distinct), "
                  f"{got:,} arrived ({distinct_got:,} distinct)")
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
