"""`propensity demo`: the system end to end on real clickstream, on this machine.

It grows with each capability. Today: a fresh local stack; the bundled REES46 sample replayed
into Kinesis and read back from every shard; the streaming job run over it; then the session
features served by Feast from Redis, checked against a recomputation from the file.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from propensity import aws, events
from propensity import features as F
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


def stream_and_check(settings: Settings, file: Path) -> bool:
    """Run the streaming job until idle, then compare what Feast serves with the file."""
    import feature_repo
    from streaming.job import StreamOptions, run

    started = time.monotonic()
    run(settings, StreamOptions(until_idle=True))
    print(f"      processed in {time.monotonic() - started:.1f} s (Spark start included)")
    valid = events.validate_file(file).valid
    expected = F.snapshots(valid, settings.session_timeout_s)
    latest = expected.sort_values(F.EVENT_TIMESTAMP).groupby(F.SESSION_ID).tail(1)
    served = feature_repo.store(settings).get_online_features(
        features=[f"{F.SESSION_VIEW}:{name}" for name in F.SESSION_FEATURE_NAMES],
        entity_rows=[{F.SESSION_ID: s} for s in latest[F.SESSION_ID]]).to_df()
    want = latest[[F.SESSION_ID, *F.SESSION_FEATURE_NAMES]].reset_index(drop=True)
    mismatched = _mismatched_rows(served[want.columns], want)
    busiest = served.sort_values(["purchase_count", "add_to_cart_count", "event_count"],
                                 ascending=False).head(5)
    print("      the busiest sessions, as Feast serves them from Redis:")
    print(busiest[[F.SESSION_ID, "event_count", "view_count", "add_to_cart_count",
                   "purchase_count", "cart_value", "last_event_type"]].to_string(index=False))
    if mismatched:
        print(f"MISMATCH: {mismatched} of {len(want):,} sessions differ from the recomputation")
        return False
    print(f"      online features of all {len(want):,} sessions equal the recomputation from "
          "the file")
    return True


def _mismatched_rows(got: pd.DataFrame, want: pd.DataFrame) -> int:
    same = pd.Series(True, index=want.index)
    for column in want.columns:
        left, right = got[column], want[column]
        if pd.api.types.is_float_dtype(right):
            same &= np.isclose(left.astype(float), right.astype(float), equal_nan=True)
        else:
            same &= (left.isna() & right.isna()) | (left.astype(object) == right.astype(object))
    return int((~same).sum())


def run_demo(settings: Settings, file: Path, keep_running: bool = False) -> int:
    stack = LocalStack(settings.home / "demo")
    stack.down()  # a fresh stream every time: what arrives is this run's alone
    print("[1/4] starting the local stack (redis-server, moto) ...")
    started = time.monotonic()
    demo_settings = stack.up()
    print(f"      up in {time.monotonic() - started:.1f} s: redis {demo_settings.redis}, "
          f"AWS endpoint {demo_settings.aws_endpoint_url}")
    try:
        print(f"[2/4] replaying {file} into Kinesis ...")
        kinesis = aws.client("kinesis", demo_settings)
        sent = replay(file, KinesisWriter(kinesis, demo_settings.kinesis_stream),
                      ShardMap(list_shards(kinesis, demo_settings.kinesis_stream)),
                      events_per_record=EVENTS_PER_RECORD)
        print(sent.format())
        print("[3/4] reading the stream back from every shard ...")
        arrived = read_events(kinesis, demo_settings.kinesis_stream)
        print(describe_arrivals(arrived))
        distinct_sent = sent.sent - sent.duplicates
        got, distinct_got = len(arrived.valid), arrived.valid["event_id"].nunique()
        if (got, distinct_got) != (sent.sent, distinct_sent) or len(arrived.invalid):
            print(f"MISMATCH: sent {sent.sent:,} events ({distinct_sent:,} distinct), "
                  f"{got:,} arrived ({distinct_got:,} distinct)")
            return 1
        print(f"      every one of the {sent.sent:,} valid events arrived exactly once")
        print("[4/4] the streaming job: Kinesis -> session state -> Redis (Feast) and S3 ...")
        return 0 if stream_and_check(demo_settings, file) else 1
    finally:
        if keep_running:
            print("the demo stack keeps running; attach a shell with:")
            for name, value in sorted(demo_settings.to_env().items()):
                print(f"  export {name}={shlex.quote(value)}")
        else:
            stack.down()
            print("demo stack stopped")
