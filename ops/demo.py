"""`propensity demo`: the system end to end on real clickstream, on this machine.

A fresh local stack; optional history through the daily batch; the shipped model as the
champion (`latest`); the streaming job and the scorer running while the bundled REES46 sample is
replayed at a chosen speed and a small shop backend asks for propensities of live sessions (live
view in ops/live_demo.py). After the first half of the events, `propensity retrain`
learns from the lake just streamed and its model becomes a canary challenger for half the
shoppers; the rest is replayed 8 times slower with both answering. Then Feast's online
features are checked against the fold over the events sent, the daily batch runs,
`propensity monitor` measures each variant's live quality and drift on the replayed sample
with an A/B readout, and the report is written.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from propensity import aws, events
from propensity import features as F
from propensity.kinesis import KinesisWriter, ShardMap, list_shards
from propensity.ops.replay import send_events
from propensity.ops.stack import LocalStack
from propensity.samples import SHIPPED_MODEL
from propensity.settings import Settings

EVENTS_PER_RECORD = 10  # moto takes ~2k records/s; packing keeps the demo quick
# The share of the sample's events streamed before the challenger is trained on the lake; the
# rest is answered by the champion and the challenger side by side, and the monitor measures
# both on it (the challenger never saw those events).
CHALLENGER_AFTER = 0.5
DEMO_CANARY = 0.5
# The rest is replayed this many times slower: the bundled sample's events crowd into its last
# half hour, so at the demo's speed the variants would answer side by side for seconds only.
SIDE_BY_SIDE_SLOWER = 8


def _mismatched_rows(got: pd.DataFrame, want: pd.DataFrame) -> int:
    same = pd.Series(True, index=want.index)
    for column in want.columns:
        left, right = got[column], want[column]
        if pd.api.types.is_float_dtype(right):
            same &= np.isclose(left.astype(float), right.astype(float), equal_nan=True)
        else:
            same &= (left.isna() & right.isna()) | (left.astype(object) == right.astype(object))
    return int((~same).sum())


def register_shipped_model(settings: Settings) -> str:
    """The model shipped in the package (trained on REES46 cosmetics October, validated on
    November: see its model card) as the demo store's `latest`."""
    from propensity import model_store

    files = {p.name: p.read_bytes() for p in SHIPPED_MODEL.iterdir() if p.is_file()}
    version = model_store.put_version(settings, files)
    model_store.promote(settings, version)
    return version


def valid_frames(file: Path, rows: int = 200) -> Iterator[pd.DataFrame]:
    """The file's valid events in small frames, in order."""
    for chunk in events.read_csv(file):
        valid = events.validate(chunk).valid
        for start in range(0, len(valid), rows):
            yield valid.iloc[start:start + rows]


def frames_until(frames: Iterator[pd.DataFrame], deadline: float,
                 max_events: float = float("inf")) -> Iterator[pd.DataFrame]:
    """Frames from `frames` until the deadline (monotonic time) or about `max_events` events;
    a frame is taken only when it will be sent, so the next phase goes on from there."""
    sent = 0
    while time.monotonic() <= deadline and sent < max_events:
        frame = next(frames, None)
        if frame is None:
            return
        sent += len(frame)
        yield frame


def train_challenger(settings: Settings, out: Path, log: Path) -> str | None:
    """`propensity retrain` over the lake streamed so far, as a process of its own (as on
    EMR): its summary shown; the challenger's version, or None when it could not be one."""
    argv = [sys.executable, "-m", "propensity.ops.cli", "retrain", "--days", "2", "--valid-days",
            "1", "--out", str(out), "--json"]
    with open(log, "ab") as err:
        done = subprocess.run(argv, env={**os.environ, **settings.to_env()},
                              stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        print(f"      no challenger: the retrain failed (exit code {done.returncode}); see {log}")
        return None
    result = json.loads(done.stdout)
    valid = result["metrics"]["validation"]
    print(f"      {result['version']}: {result['split']}; validation ROC AUC "
          f"{valid['roc_auc']:.4f} on {valid['points']:,} points; refit on "
          f"{result['metrics']['refit']['points']:,} points; {result['reason']}")
    return result["version"] if result["challenger"] else None


def await_rollout(url: str, challenger: str, timeout_s: float = 30) -> None:
    """Until the scorer serves the challenger (it polls the store every second here)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while (httpx.get(f"{url}/ready", timeout=5).json().get("challenger") or {}).get(
            "version") != challenger:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scorer did not pick up the challenger {challenger}")
        time.sleep(0.2)


def monitor(settings: Settings, day: date, folder: Path) -> tuple[Any, Any]:
    """`propensity monitor` and `monitor ab` over the demo's prediction log: the live quality
    and drift report (written to `folder` too) and the A/B readout, printed."""
    from propensity.monitoring import ab, live, report

    measured = live.run(settings, live.MonitorDay(day, publish=False))
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in report.files(measured).items():
        (folder / name).write_bytes(body)
    readout = ab.run(settings, ab.AbTest(day, day))
    print("      " + report.text(measured).replace("\n", "\n      "))
    print("      " + readout.format().replace("\n", "\n      "))
    return measured, readout


def check_online(settings: Settings, file: Path, sent: int, wait_s: float = 90) -> bool:
    """Feast's online session features equal the fold over the events sent, once the
    streaming job has caught up (asked again every 2 s for up to `wait_s`)."""
    from propensity import feature_repo

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
    from propensity import feature_repo
    from propensity.feature_repo.definitions import feature_view

    ids = sorted(set(ids))
    names = [f.name for f in feature_view(settings, view).features]
    served = feature_repo.store(settings).get_online_features(
        features=[f"{view}:{name}" for name in names],
        entity_rows=[{key: i} for i in ids]).to_df()
    return int(served[names].notna().any(axis=1).sum())


def run_daily_batch(settings: Settings, imports: list[Path], log: Path) -> None:
    """The daily batch (imports, if any, then the lake's days) into Feast, as a process of its
    own as on EMR (its Spark output goes to `log`); its summary shown."""
    argv = [sys.executable, "-m", "propensity.ops.cli", "batch"]
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
    from propensity.ops.live_demo import propensities

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
    from propensity.ops import live_demo
    from propensity.ops.testing import running_scorer
    from propensity.serving import MAX_BATCH

    print("[1/9] starting the local stack (redis-server, moto) ...")
    started = time.monotonic()
    stack, demo = fresh_stack(settings.home / "demo")  # what arrives is this run's alone
    # The scorer looks for a new rollout every second; the retrained challenger answers for
    # half the shoppers, so that each variant has answers enough to measure on a sample.
    demo = demo.model_copy(update={"model_poll_s": 1.0, "retrain_canary_share": DEMO_CANARY})
    print(f"      up in {time.monotonic() - started:.1f} s: redis {demo.redis}, "
          f"AWS endpoint {demo.aws_endpoint_url}")
    stream_job = None
    watch = live_demo.Watch()
    challenger = None
    try:
        print("[2/9] history and the daily batch ...")
        if history:
            run_daily_batch(demo, history, stack.dir / "demo-batch.log")
        else:
            print("      no --history given: user and product features start empty (the "
                  "bundled sample is the first hours of its shop's data); the batch runs over "
                  "the streamed day in step 8")
        print("[3/9] the champion: the shipped model becomes the store's `latest` ...")
        version = register_shipped_model(demo)
        print(f"      {version} (LightGBM, REES46 cosmetics Oct -> Nov; see "
              "propensity/data/model/model_card.md)")
        print("[4/9] starting the streaming job and the scorer ...")
        log = stack.dir / "demo-stream.log"
        stream_job = live_demo.start_stream_job(demo, log)
        total = len(events.validate_file(file).valid)
        frames = valid_frames(file)
        with running_scorer(demo) as url:
            print(f"      scorer on {url}; streaming job log {log}")
            kinesis = aws.client("kinesis", demo)
            shop = live_demo.Shop(url, watch)
            shop.start()

            def replay(until: float, max_events: float = float("inf"), pace: float = speed
                       ) -> None:
                replayer = threading.Thread(target=lambda: send_events(
                    frames_until(frames, until, max_events),
                    KinesisWriter(kinesis, demo.kinesis_stream),
                    ShardMap(list_shards(kinesis, demo.kinesis_stream)), speed=pace,
                    events_per_record=EVENTS_PER_RECORD, progress=False,
                    on_sent=watch.on_sent), daemon=True)
                replayer.start()
                redraw = sys.stdout.isatty()  # a live block on a terminal, a log elsewhere
                while replayer.is_alive():
                    replayer.join(3)
                    watch.read_job_log(log)
                    print(("\033[H\033[J" if redraw else "") + watch.view(), flush=True)

            print(f"[5/9] replaying the first {CHALLENGER_AFTER:.0%} of {file}'s events at "
                  f"{speed:g}x, while the shop asks the champion for propensities ...")
            replay(time.monotonic() + duration_s, CHALLENGER_AFTER * total)
            print("[6/9] a challenger retrained from the lake just streamed, in canary for "
                  f"{DEMO_CANARY:.0%} of the shoppers ...")
            check_online(demo, file, watch.sent)  # the job has caught up: the lake is whole
            challenger = train_challenger(demo, settings.home / "demo-retrain",
                                          stack.dir / "demo-retrain.log")
            if challenger:
                await_rollout(url, challenger)
            print(f"[7/9] replaying the rest at {speed / SIDE_BY_SIDE_SLOWER:g}x for up to "
                  f"{duration_s:.0f} s, the champion and the challenger answering side by "
                  "side ...")
            replay(time.monotonic() + duration_s, pace=speed / SIDE_BY_SIDE_SLOWER)
            time.sleep(4)  # the last micro-batches reach Redis
            shop.stop()
            watch.read_job_log(log)
            print("[8/9] what Feast serves, then the daily batch over the streamed day ...")
            ok = check_online(demo, file, watch.sent)
            live_demo.stop_stream_job(stream_job)  # caught up: the lake holds every event
            stream_job = None
            effect = batch_effect(demo, url, watch.recent_requests(MAX_BATCH),
                                  stack.dir / "demo-batch.log")
            print(f"      {effect}")
        # The scorer has stopped: its prediction log is flushed.
        print("[9/9] the monitor over the replayed sample, and the report ...")
        report_folder = settings.home / "demo-report"
        measured, readout = monitor(demo, datetime.now(UTC).date(), report_folder / "monitor")
        path = live_demo.report(watch, report_folder, version, watch.sent, effect,
                                measured, readout)
        answers = watch.answers
        latencies = [a.latency_ms for a in answers] or [0.0]
        print(f"summary: {watch.sent:,} events replayed in {time.monotonic() - watch.started:.0f}"
              f" s; {len(answers):,} propensities served ({watch.errors} errors, "
              f"{sum(a.degraded for a in answers)} degraded), latency p50 "
              f"{np.percentile(latencies, 50):.1f} ms p99 {np.percentile(latencies, 99):.1f} ms;"
              f" freshness p50 {np.median(watch.freshness_p50_s or [0]):.2f} s; {effect}; "
              f"report {path}")
        return 0 if ok and not watch.errors and challenger else 1
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
