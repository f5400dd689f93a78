"""`propensity demo`: the system end to end on real clickstream, on this machine.

A fresh local stack; optional history through the daily batch; the shipped model as `latest`;
the streaming job and the scorer running while the bundled REES46 sample is replayed at a
chosen speed and a small shop backend asks for propensities of live sessions (live view in
propensity/live_demo.py); then Feast's online features checked against the fold over the
events sent, a summary, and a report with plots.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from propensity import aws, events
from propensity import features as F
from propensity.kinesis import KinesisWriter, ShardMap, list_shards
from propensity.replay import send_events
from propensity.settings import Settings
from propensity.stack import LocalStack

EVENTS_PER_RECORD = 10  # moto takes ~2k records/s; packing keeps the demo quick


def _mismatched_rows(got: pd.DataFrame, want: pd.DataFrame) -> int:
    same = pd.Series(True, index=want.index)
    for column in want.columns:
        left, right = got[column], want[column]
        if pd.api.types.is_float_dtype(right):
            same &= np.isclose(left.astype(float), right.astype(float), equal_nan=True)
        else:
            same &= (left.isna() & right.isna()) | (left.astype(object) == right.astype(object))
    return int((~same).sum())


SHIPPED_MODEL = Path(__file__).parent / "data" / "model"


def register_shipped_model(settings: Settings) -> str:
    """The model shipped in the package (trained on REES46 cosmetics October, validated on
    November: see its model card) as the demo store's `latest`."""
    from propensity import model_store

    files = {p.name: p.read_bytes() for p in SHIPPED_MODEL.iterdir() if p.is_file()}
    version = model_store.put_version(settings, files)
    model_store.promote(settings, version)
    return version


def frames_until(file: Path, deadline: float, rows: int = 200):
    """The file's valid events in small frames, until the deadline (monotonic time)."""
    for chunk in events.read_csv(file):
        valid = events.validate(chunk).valid
        for start in range(0, len(valid), rows):
            if time.monotonic() > deadline:
                return
            yield valid.iloc[start:start + rows]


def check_online(settings: Settings, file: Path, sent: int, wait_s: float = 90) -> bool:
    """Feast's online session features equal the fold over the events sent, once the
    streaming job has caught up (asked again every 2 s for up to `wait_s`)."""
    import feature_repo

    valid = events.validate_file(file).valid.iloc[:sent]
    expected = F.snapshots(valid, settings.session_timeout_s)
    latest = expected.sort_values(F.EVENT_TIMESTAMP).groupby(F.SESSION_ID).tail(1)
    want = latest[[F.SESSION_ID, *F.SESSION_FEATURE_NAMES]].reset_index(drop=True)
    store = feature_repo.store(settings)

    def served() -> pd.DataFrame:
        return store.get_online_features(
            features=[f"{F.SESSION_VIEW}:{name}" for name in F.SESSION_FEATURE_NAMES],
            entity_rows=[{F.SESSION_ID: s} for s in latest[F.SESSION_ID]]).to_df()

    deadline = time.monotonic() + wait_s
    while mismatched := _mismatched_rows(served()[want.columns], want):
        if time.monotonic() > deadline:
            print(f"MISMATCH: {mismatched} of {len(want):,} sessions differ from the "
                  "recomputation")
            return False
        time.sleep(2)
    print(f"      online features of all {len(want):,} sessions equal the recomputation from "
          f"the {sent:,} events sent")
    return True


def fresh_stack(home: Path) -> tuple[LocalStack, Settings]:
    """A local stack of its own under `home`, started afresh: a new stream, and so (the stack
    sees to it) a new checkpoint."""
    stack = LocalStack(home)
    stack.down()
    return stack, stack.up()


def online_entities(settings: Settings, view: str, key: str, ids: list[int]) -> int:
    """How many of the entities (distinct `ids` of `key`) Feast serves features of."""
    import feature_repo
    from feature_repo.definitions import feature_view

    ids = sorted(set(ids))
    names = [f.name for f in feature_view(settings, view).features]
    served = feature_repo.store(settings).get_online_features(
        features=[f"{view}:{name}" for name in names],
        entity_rows=[{key: i} for i in ids]).to_df()
    return int(served[names].notna().any(axis=1).sum())


def run_daily_batch(settings: Settings, imports: list[Path], log: Path) -> None:
    """The daily batch (imports, if any, then the lake's days) into Feast, as a process of its
    own as on EMR (its Spark output goes to `log`); its summary shown."""
    argv = [sys.executable, "-m", "propensity.cli", "batch"]
    for path in imports:
        argv += ["--import", str(path)]
    with open(log, "ab") as err:
        done = subprocess.run(argv, env={**os.environ, **settings.to_env()}, stdout=subprocess.PIPE,
                              stderr=err, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the daily batch failed (exit code {done.returncode}); see {log}")
    print("      " + done.stdout.strip().replace("\n", "\n      "))


def batch_effect(settings: Settings, url: str, requests: list[dict], log: Path) -> str:
    """The shop's requests for the last active sessions scored before and after the daily
    batch over the day just streamed: what Feast now serves of their users and products, and
    how far their propensities moved."""
    from propensity.live_demo import propensities

    before = propensities(url, requests)
    run_daily_batch(settings, [], log)
    after = propensities(url, requests)
    users = online_entities(settings, F.USER_VIEW, F.USER_ID, [r[F.USER_ID] for r in requests])
    products = online_entities(settings, F.PRODUCT_VIEW, F.PRODUCT_ID,
                               [r[F.PRODUCT_ID] for r in requests])
    moved = np.abs(np.array(after) - np.array(before))
    return (f"the last {len(requests)} active sessions: Feast now serves user features of "
            f"{users} of {len({r[F.USER_ID] for r in requests})} users and product features of "
            f"{products} of {len({r[F.PRODUCT_ID] for r in requests})} products; their "
            f"propensities moved by {moved.mean():.4f} on average (at most {moved.max():.4f})")


def run_demo(settings: Settings, file: Path, keep_running: bool = False, speed: float = 80.0,
             duration_s: float = 150.0, history: list[Path] | None = None) -> int:
    from propensity import live_demo
    from propensity.testing import running_scorer
    from serving.app import MAX_BATCH

    print("[1/7] starting the local stack (redis-server, moto) ...")
    started = time.monotonic()
    stack, demo = fresh_stack(settings.home / "demo")  # what arrives is this run's alone
    print(f"      up in {time.monotonic() - started:.1f} s: redis {demo.redis}, "
          f"AWS endpoint {demo.aws_endpoint_url}")
    stream_job = None
    watch = live_demo.Watch()
    try:
        print("[2/7] history and the daily batch ...")
        if history:
            run_daily_batch(demo, history, stack.dir / "demo-batch.log")
        else:
            print("      no --history given: user and product features start empty (the "
                  "bundled sample is the first hours of its shop's data); the batch runs over "
                  "the streamed day in step 6")
        print("[3/7] the model: the shipped one becomes the store's `latest` ...")
        version = register_shipped_model(demo)
        print(f"      {version} (LightGBM, REES46 cosmetics Oct -> Nov; see "
              "propensity/data/model/model_card.md)")
        print("[4/7] starting the streaming job and the scorer ...")
        log = stack.dir / "demo-stream.log"
        stream_job = live_demo.start_stream_job(demo, log)
        with running_scorer(demo) as url:
            print(f"      scorer on {url}; streaming job log {log}")
            print(f"[5/7] replaying {file} at {speed:g}x for up to {duration_s:.0f} s, while "
                  "the shop asks for propensities ...")
            kinesis = aws.client("kinesis", demo)
            shop = live_demo.Shop(url, watch)
            shop.start()
            deadline = time.monotonic() + duration_s

            def replay_live() -> None:
                send_events(frames_until(file, deadline),
                            KinesisWriter(kinesis, demo.kinesis_stream),
                            ShardMap(list_shards(kinesis, demo.kinesis_stream)), speed=speed,
                            events_per_record=EVENTS_PER_RECORD, progress=False,
                            on_sent=watch.on_sent)

            replayer = threading.Thread(target=replay_live, daemon=True)
            replayer.start()
            redraw = sys.stdout.isatty()  # a live block on a terminal, a log elsewhere
            while replayer.is_alive():
                replayer.join(3)
                watch.read_job_log(log)
                print(("\033[H\033[J" if redraw else "") + watch.view(), flush=True)
            time.sleep(4)  # the last micro-batches reach Redis
            shop.stop()
            watch.read_job_log(log)
            print("[6/7] what Feast serves, then the daily batch over the streamed day ...")
            ok = check_online(demo, file, watch.sent)
            live_demo.stop_stream_job(stream_job)  # caught up: the lake holds every event
            stream_job = None
            effect = batch_effect(demo, url, watch.recent_requests(MAX_BATCH),
                                  stack.dir / "demo-batch.log")
            print(f"      {effect}")
        print("[7/7] the report ...")
        path = live_demo.report(watch, settings.home / "demo-report", version, watch.sent,
                                effect)
        answers = watch.answers
        latencies = [a.latency_ms for a in answers] or [0.0]
        print(f"summary: {watch.sent:,} events replayed in {time.monotonic() - watch.started:.0f}"
              f" s; {len(answers):,} propensities served ({watch.errors} errors, "
              f"{sum(a.degraded for a in answers)} degraded), latency p50 "
              f"{np.percentile(latencies, 50):.1f} ms p99 {np.percentile(latencies, 99):.1f} ms;"
              f" freshness p50 {np.median(watch.freshness_p50_s or [0]):.2f} s; {effect}; "
              f"report {path}")
        return 0 if ok and not watch.errors else 1
    finally:
        if stream_job is not None:
            live_demo.stop_stream_job(stream_job)
        if keep_running:
            print("the demo stack keeps running; attach a shell with:")
            for name, value in sorted(demo.to_env().items()):
                print(f"  export {name}={shlex.quote(value)}")
        else:
            stack.down()
            print("demo stack stopped")
