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
from datetime import UTC, datetime
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
    from propensity import events
    from propensity import features as F

    snapshots = F.snapshots(events.validate_file(path).valid, settings.session_timeout_s)
    destinations = _stream_destinations(settings)
    for view, columns in F.ARCHIVE_COLUMNS.items():
        destinations.online[view].write(_arrow(snapshots, columns), _part(0))
    return int(snapshots[F.SESSION_ID].nunique())


def write_like_the_stream(settings: Settings, path: Path, batches: int,
                          arrival: datetime | None = None) -> int:
    """A REES46 file's valid events written as the streaming job writes them, in `batches`
    micro-batches (in arrival order), each through the sink's own destinations
    (streaming/destinations.py): the lake, the archive's session views and the online store.
    Returns the events written."""
    import numpy as np
    import pyarrow as pa

    from propensity import events
    from propensity import features as F

    valid = events.validate_file(path).valid
    snapshots = F.snapshots(valid, settings.session_timeout_s)
    lake = events.to_arrow(valid)
    arrived = arrival or datetime.now(UTC)
    lake = lake.append_column(events.LAKE_SCHEMA.field(events.ARRIVAL_TIME), pa.array(
        [arrived] * lake.num_rows, events.LAKE_SCHEMA.field(events.ARRIVAL_TIME).type))
    destinations = _stream_destinations(settings)
    for batch, (rows, snapshot_rows) in enumerate(zip(
            np.array_split(np.arange(lake.num_rows), batches),
            np.array_split(np.arange(len(snapshots)), batches), strict=True)):
        destinations.lake.write(lake.take(rows), _part(batch))
        for view, columns in F.ARCHIVE_COLUMNS.items():
            table = _arrow(snapshots.iloc[snapshot_rows], columns)
            destinations.archive[view].write(table, _part(batch))
            destinations.online[view].write(table, _part(batch))
    return lake.num_rows


def _stream_destinations(settings: Settings):
    from propensity.streaming.destinations import Destinations

    return Destinations.of(settings)


def _part(batch: int):
    from propensity.streaming.destinations import BatchPart

    return BatchPart(batch)


def _arrow(frame, columns):
    import pyarrow as pa

    return pa.Table.from_pandas(frame[list(columns)], preserve_index=False)


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
                        timeout_s: float = 120, cores: Collection[int] | None = None,
                        stdout: Path | None = None) -> Iterator[str]:
    """A server process started with the settings in its environment (on `cores`, if
    given; its standard output into the file `stdout`, if given); yields its base URL once
    GET /health answers; stops it (SIGTERM, then SIGKILL) after the block. (120 s to answer:
    a scorer took over 60 s to import Feast and LightGBM and load its model while four test
    processes shared this machine's two cores.)"""
    import urllib.request

    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(argv, env={**os.environ, **settings.to_env()},
                               stdout=out, stderr=subprocess.PIPE,
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
        if stdout:
            out.close()


SCORER_MODULE = "propensity.serving"  # `python -m` it: the scorer's process, as in its image


def running_scorer(settings: Settings, port: int | None = None, workers: int = 1,
                   python: str | Path = sys.executable, cores: Collection[int] | None = None,
                   stdout: Path | None = None) -> contextlib.AbstractContextManager[str]:
    """`propensity serve` on 127.0.0.1 with these settings, for a block (its base URL);
    `python`: the interpreter of another install to serve from (the scorer image's, say);
    `cores`: the CPUs it may run on (all by default)."""
    port = port or free_port()
    return running_http_server(
        "the scorer", [str(python), "-m", SCORER_MODULE, "--port", str(port),
                       "--workers", str(workers)], settings, port, cores=cores, stdout=stdout)


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


# -- the streaming job's stages and destinations in memory -----------------------------------
# In-memory versions of the job's own interfaces (streaming/destinations.py, the fold's
# SessionStore), and its stages chained without Spark: fast tests of the contract stage, the
# fold and the sink together, with no moto, Redis or JVM. The real-stack tests stay beside.

class MemoryDataset:
    """An in-memory `DatedParquet`: objects by (day, name); a part written again replaces its
    objects, as on S3."""

    def __init__(self, date_column: str, columns: tuple[str, ...] | None = None) -> None:
        self.date_column, self.columns = date_column, columns
        self.objects: dict[tuple[str, str], Any] = {}

    def write(self, table: Any, part: Any) -> Any:
        from propensity.streaming.destinations import Written, by_date

        rows = table.select(list(self.columns)) if self.columns else table
        for day, rows_of_day in by_date(rows, self.date_column).items():
            self.objects[(day, part.object_name)] = rows_of_day
        return Written(rows.num_rows)

    def table(self) -> Any:
        """Every object's rows, in object order."""
        import pyarrow as pa

        return pa.concat_tables([self.objects[k] for k in sorted(self.objects)])


class MemoryOnlineView:
    """An in-memory `OnlineView`: each entity's latest row, replaced only by a newer one (as
    the Redis writer leaves an entity held as new or newer alone)."""

    def __init__(self, settings: Settings, view: str) -> None:
        from propensity.feature_repo import definitions

        self.view = definitions.feature_view(settings, view)
        self.keys = list(definitions.join_keys(self.view))
        self.rows: dict[tuple, dict] = {}

    def write(self, table: Any, part: Any) -> Any:
        from propensity import features as F
        from propensity.feature_repo.online import latest_per_entity
        from propensity.streaming.destinations import Written

        latest = latest_per_entity(table, self.keys)
        names = [F.EVENT_TIMESTAMP, *(f.name for f in self.view.features)]
        for row in latest.select([*self.keys, *names]).to_pylist():
            key = tuple(row[k] for k in self.keys)
            held = self.rows.get(key)
            if held is None or row[F.EVENT_TIMESTAMP] > held[F.EVENT_TIMESTAMP]:
                self.rows[key] = {name: row[name] for name in names}
        return Written(latest.num_rows)


def memory_destinations(settings: Settings) -> Any:
    """The streaming sink's destinations (streaming/destinations.py), in memory."""
    from propensity import events
    from propensity import features as F
    from propensity.streaming.destinations import Destinations

    return Destinations(
        lake=MemoryDataset("event_time", tuple(events.LAKE_SCHEMA.names)),
        archive={view: MemoryDataset(F.EVENT_TIMESTAMP, columns)
                 for view, columns in F.ARCHIVE_COLUMNS.items()},
        quarantine=MemoryDataset(events.ARRIVAL_TIME),
        online={view: MemoryOnlineView(settings, view) for view in F.ARCHIVE_COLUMNS})


class MemorySessionStore:
    """The fold's SessionStore (streaming/sessionize.py: the part of Spark's MapState it uses)
    as a dict of session id -> [last event time in us, packed accumulator]."""

    def __init__(self, sessions: dict[str, list] | None = None) -> None:
        self.sessions = {} if sessions is None else sessions

    def getValue(self, key: tuple) -> tuple | None:
        value = self.sessions.get(key[0])
        return None if value is None else (value[0], value[1].encode())

    def updateValue(self, key: tuple, value: tuple) -> None:
        self.sessions[key[0]] = [value[0], value[1].decode()]

    def iterator(self) -> Iterator[tuple[tuple, tuple]]:
        return (((k,), (v[0],)) for k, v in list(self.sessions.items()))

    def removeKey(self, key: tuple) -> None:
        del self.sessions[key[0]]


def kinesis_rows(payloads: Sequence[bytes], events_per_record: int = 1, shard_id: str = "s-0",
                 first_sequence: int = 0, arrival_s: float | None = None) -> Any:
    """Kinesis rows (the source's RAW_SCHEMA) of `payloads`, packed `events_per_record` to a
    newline-delimited record, as the source yields them."""
    from propensity.streaming.kinesis_shards import to_batch

    arrival_s = time.time() if arrival_s is None else arrival_s
    records = [(str(first_sequence + n).zfill(20), arrival_s,
                b"\n".join(payloads[start:start + events_per_record]))
               for n, start in enumerate(range(0, len(payloads), events_per_record))]
    return to_batch(shard_id, records)


class StagesInMemory:
    """The streaming job's stages without Spark, one micro-batch per `run`: the contract stage
    (parse_batches), the fold per session bucket (sessionize_bucket, each bucket's state in a
    MemorySessionStore and its clock kept between batches), and the sink's writer on the given
    destinations (memory_destinations by default)."""

    def __init__(self, settings: Settings, destinations: Any = None, buckets: int = 8,
                 watermark_delay_s: int = 600) -> None:
        from propensity.streaming.sessionize import SessionizeConfig
        from propensity.streaming.sinks import PartitionWriter

        self.destinations = destinations or memory_destinations(settings)
        self.writer = PartitionWriter(self.destinations)
        self.config = SessionizeConfig(settings.session_timeout_s, watermark_delay_s)
        self.buckets = buckets
        self.stores: dict[int, MemorySessionStore] = {}
        self.clocks: dict[int, Any] = {}
        self.last_output: Any = None  # the fold's output of the last batch, as the sink got it

    def run(self, raw: Any, batch_id: int) -> Any:
        """One micro-batch of Kinesis rows through the stages; the sink's report."""
        import pyarrow as pa

        from propensity.streaming import sessionize as S
        from propensity.streaming.parse import parse_batches

        pairs: dict[int, list[tuple[str | None, bytes]]] = {}
        for batch in parse_batches(iter([raw]), self.buckets):
            for bucket, session, record in zip(batch.column("bucket").to_pylist(),
                                               batch.column("user_session").to_pylist(),
                                               batch.column("record").to_pylist(), strict=True):
                pairs.setdefault(bucket, []).append((session, record))
        rows: list[tuple] = []
        for bucket in sorted(pairs):
            store = self.stores.setdefault(bucket, MemorySessionStore())
            out, clock = S.sessionize_bucket(self.config, bucket, pairs[bucket], store,
                                             self.clocks.get(bucket))
            self.clocks[bucket] = clock
            rows.extend(out)
        self.last_output = pa.Table.from_pandas(S.output_frame(rows), schema=S.OUTPUT_SCHEMA,
                                                preserve_index=False)
        return self.writer.write(self.last_output, batch_id)
