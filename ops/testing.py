"""Helpers that make the real components easy to use in tests and benchmarks.

- `running_stack(home)`: a real redis-server and moto server for the duration of a block.
- `with_fresh_stream(settings)`: settings pointing at a new, empty Kinesis stream.
- `FlakyKinesis`: a Kinesis client that throttles and partially fails PutRecords calls on
  purpose, forwarding what it accepts to the real (moto) Kinesis behind it.
- `write_csv(path, rows)`: a REES46 CSV file (plain or .gz) from rows of field values.
- `isolated(settings, folder)`: settings for one test's pipeline: its own stream, S3 prefixes,
  checkpoint and Feast registry, on the shared stack, with Redis emptied.
- `load_session_features(settings, path)`: a REES46 file's session features in Redis, as the
  streaming job leaves them (without running it).
- `session_requests(path)`: a scoring request per session of a REES46 file (its last event's
  user and product), the keys `load_session_features` writes.
- `running_scorer(settings)`: `propensity serve` in a process of its own, ready, for a block.
- `steady_requests(url, bodies, seconds, rate)`: scoring requests at a steady rate, with
  each one's status, answer and latency.
- `RedisProcess`: a redis-server of a test's own, which the test may stop and start again
  (on the same port) to show what happens while Redis is away; durable (append-only file) or not.

Kinesis throttling at the HTTP level, for processes that cannot take a wrapped client (the
streaming job), is `propensity.ops.throttling_proxy.ThrottlingProxy`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from propensity import aws
from propensity.events import REES46_COLUMNS
from propensity.ops.stack import LocalStack
from propensity.settings import Settings

_THROTTLED = "ProvisionedThroughputExceededException"


@contextmanager
def running_stack(home: Path) -> Iterator[Settings]:
    stack = LocalStack(home)
    try:
        yield stack.up()
    finally:
        stack.down()


def with_fresh_stream(settings: Settings, shards: int | None = None) -> Settings:
    fresh = settings.model_copy(update={
        "kinesis_stream": f"test-{uuid.uuid4().hex[:12]}",
        "kinesis_shards": shards or settings.kinesis_shards,
    })
    aws.ensure_stream(fresh)
    return fresh


class FlakyKinesis:
    """Wraps a Kinesis client: the first `throttled_calls` PutRecords calls are rejected whole,
    the next `partial_calls` accept only every other record and report the rest as throttled,
    exactly as a partial PutRecords response does. Everything else is passed through."""

    def __init__(self, inner: Any, throttled_calls: int = 0, partial_calls: int = 0) -> None:
        self._inner = inner
        self._throttled_left = throttled_calls
        self._partial_left = partial_calls
        self.rejected_records = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_records(self, StreamName: str, Records: Sequence[dict]) -> dict:
        if self._throttled_left:
            self._throttled_left -= 1
            self.rejected_records += len(Records)
            raise ClientError({"Error": {"Code": _THROTTLED, "Message": "injected"}},
                              "PutRecords")
        if not self._partial_left:
            return self._inner.put_records(StreamName=StreamName, Records=list(Records))
        self._partial_left -= 1
        accepted = list(Records[::2])
        response = self._inner.put_records(StreamName=StreamName, Records=accepted)
        results: list[dict] = []
        forwarded = iter(response["Records"])
        for i in range(len(Records)):
            if i % 2 == 0:
                results.append(next(forwarded))
            else:
                results.append({"ErrorCode": _THROTTLED, "ErrorMessage": "injected"})
        failed = len(Records) - len(accepted)
        self.rejected_records += failed
        return {"FailedRecordCount": failed + response["FailedRecordCount"], "Records": results}


def isolated(settings: Settings, folder: Path, shards: int = 2) -> Settings:
    from propensity import feature_repo

    name = f"t{uuid.uuid4().hex[:10]}"
    fresh = with_fresh_stream(settings, shards).model_copy(update={
        "events_uri": f"s3://propensity-lake/{name}/events",
        "quarantine_uri": f"s3://propensity-lake/{name}/quarantine",
        "features_uri": f"s3://propensity-features/{name}/features",
        "models_uri": f"s3://propensity-models/{name}/models",
        "predictions_uri": f"s3://propensity-predictions/{name}/log",
        "monitoring_uri": f"s3://propensity-predictions/{name}/monitoring",
        "checkpoint_dir": str(folder / "checkpoints"),
        "feast_registry": str(folder / "feast" / "registry.db"),
    })
    feature_repo.redis_client(fresh).flushall()
    return fresh


def write_csv(path: Path, rows: Sequence[Sequence[object]],
              header: Sequence[str] = REES46_COLUMNS) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def load_session_features(settings: Settings, path: Path) -> int:
    """Writes the latest session and session-product features of a REES46 file's valid
    events to Redis with the streaming sink's writer and TTL; returns the sessions."""
    import pyarrow as pa

    from propensity import events, feature_repo
    from propensity import features as F
    from propensity.feature_repo import redis_layout
    from propensity.feature_repo.definitions import feature_view
    from propensity.feature_repo.online import write_latest

    snapshots = F.snapshots(events.validate_file(path).valid, settings.session_timeout_s)
    config = feature_repo.repo_config(settings, key_ttl_s=settings.online_ttl_s)
    client = redis_layout.client(config.online_store)
    for view, columns in F.ARCHIVE_COLUMNS.items():
        table = pa.Table.from_pandas(snapshots[list(columns)], preserve_index=False)
        write_latest(client, config, feature_view(settings, view), table)
    return int(snapshots[F.SESSION_ID].nunique())


def session_requests(path: Path) -> list[dict]:
    """{session_id, user_id, product_id} of each session's last valid event in the file."""
    from propensity import events

    last = events.validate_file(path).valid.groupby("user_session").tail(1)
    return [{"session_id": row.user_session, "user_id": int(row.user_id),
             "product_id": int(row.product_id)} for row in last.itertuples()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_cores(cores: Collection[int] | None) -> Callable[[], None] | None:
    """A Popen `preexec_fn` that keeps the child, and every thread it starts, on `cores`
    (None: wherever the kernel puts it)."""
    if not cores:
        return None
    chosen = set(cores)
    return lambda: os.sched_setaffinity(0, chosen)


@contextmanager
def running_http_server(name: str, argv: list[str], settings: Settings, port: int,
                        timeout_s: float = 120, cores: Collection[int] | None = None
                        ) -> Iterator[str]:
    """A server process started with the settings in its environment (on `cores`, if
    given); yields its base URL once GET /health answers; stops it (SIGTERM, then SIGKILL)
    after the block. (120 s to answer: a scorer took over 60 s to import Feast and LightGBM
    and load its model while four test processes shared this machine's two cores.)"""
    import urllib.request

    process = subprocess.Popen(argv, env={**os.environ, **settings.to_env()},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=on_cores(cores))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: {process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not answer on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def running_scorer(settings: Settings, port: int | None = None, workers: int = 1,
                   python: str | Path = sys.executable, cores: Collection[int] | None = None
                   ) -> contextlib.AbstractContextManager[str]:
    """`propensity serve` on 127.0.0.1 with these settings, for a block (its base URL);
    `python`: the interpreter of another install to serve from (the scorer image's, say);
    `cores`: the CPUs it may run on (all by default)."""
    port = port or free_port()
    return running_http_server(
        "the scorer", [str(python), "-m", "propensity.serving", "--port", str(port),
                       "--workers", str(workers)], settings, port, cores=cores)


class RedisProcess:
    """A redis-server on 127.0.0.1 that a test can stop and restart on the same port.
    `durable`: every acknowledged write is in its append-only file before the answer
    (appendfsync always), so a restart after a crash has all of them, as a managed Redis
    with a replica promoted on failover has (nearly) all of them."""

    def __init__(self, folder: Path, durable: bool = False) -> None:
        from propensity.ops.stack import redis_server_binary

        self.binary = redis_server_binary()
        self.durable = durable
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--dir", str(self.folder),
             *(("--appendonly", "yes", "--appendfsync", "always") if self.durable
               else ("--appendonly", "no"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # as a crash would: no goodbye to the clients
            self.process.wait()
            self.process = None


async def steady_requests(url: str, bodies: Sequence[dict], seconds: float, rate: float
                          ) -> list[tuple[float, int, dict | None, float]]:
    """POST /v1/propensity at a steady rate for `seconds`, cycling through `bodies`:
    (started, status (0: no answer), answer body when 200, latency ms) per request, in the
    order they started."""
    import asyncio
    import gc

    import httpx

    out: list[tuple[float, int, dict | None, float]] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        started = time.monotonic()
        try:
            response = await client.post(f"{url}/v1/propensity", json=bodies[i % len(bodies)])
            body = response.json() if response.status_code == 200 else None
            out.append((started, response.status_code, body,
                        (time.monotonic() - started) * 1000))
        except httpx.HTTPError:
            out.append((started, 0, None, (time.monotonic() - started) * 1000))

    # The caller's heap (a test process holds pandas, Feast, Spark clients) is kept from the
    # collector meanwhile: a full collection of it stalls this client for 50 ms and more here,
    # which would be measured as the scorer's latency.
    gc.freeze()
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            tasks = []
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < seconds:
                tasks.append(asyncio.create_task(one(client, i)))
                i += 1
                # Request i is due at start + i / rate, whatever the previous ones took.
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            await asyncio.gather(*tasks)
    finally:
        gc.unfreeze()
    return sorted(out, key=lambda row: row[0])
