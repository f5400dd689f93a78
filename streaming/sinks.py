"""Where one micro-batch goes. Every write is idempotent per batch id, so a batch that Spark
replays after a crash changes nothing:

- the event lake: valid, de-duplicated events as Parquet, `<events>/date=D/batch-...parquet`;
- the feature archive (Feast's offline source): one snapshot per event and view,
  `<features>/<view>/date=D/batch-...parquet`;
- the quarantine: invalid and late events with payload and reason, partitioned by arrival date;
- Redis in Feast's online format, through Feast's own conversion and Redis writer: only the
  latest snapshot per entity, which Feast skips when Redis already holds that instant or later.
  While Redis is away (a restart, a failover) the batch retries its Redis writes for up to
  PROPENSITY_STREAM_ONLINE_RETRY_S and then goes on: Kinesis holds the backlog meanwhile, and
  the next batches catch up. Only after that budget does the batch fail (and the job with it).

Object names depend only on the checkpoint, the batch id and the date, so a replayed batch
overwrites itself, and a job started afresh on a new checkpoint (batch ids from 0 again) never
overwrites the objects of the old one: names carry the query's id, which Spark keeps for the
life of a checkpoint (`batch-<query>-N.parquet`; `batch-N.parquet` for a sink used without one).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from feast.infra.online_stores.redis import RedisOnlineStore

import feature_repo
from feature_repo import definitions
from feature_repo.online import write_latest
from propensity import aws, events
from propensity import features as F
from propensity.settings import Settings
from streaming.parse import EVENT_RECORD, QUARANTINE_RECORD, unpack
from streaming.sessionize import INVALID, LATE, SNAPSHOT

log = logging.getLogger("propensity.stream")

SESSION_COLUMNS = (F.SESSION_ID, F.USER_ID, "event_id", "event_time", F.EVENT_TIMESTAMP,
                   *F.SESSION_FEATURE_NAMES)
SESSION_PRODUCT_COLUMNS = (F.SESSION_ID, F.PRODUCT_ID, "event_id", F.EVENT_TIMESTAMP,
                           *F.SESSION_PRODUCT_FEATURE_NAMES)


@dataclass
class BatchReport:
    batch_id: int
    events: int = 0
    sessions: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    online_rows: int = 0
    online_retries: int = 0  # Redis writes repeated because Redis was unreachable
    write_s: float = 0.0
    freshness_s: list[float] = field(default_factory=list)  # arrival -> readable in Redis


class MicroBatchSink:
    """`foreachBatch` target. Created on the driver; holds no Spark objects."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reports: dict[int, BatchReport] = {}
        self._fs: Any = None
        self._repo_config: Any = None
        self._views = {name: definitions.feature_view(settings, name)
                       for name in (F.SESSION_VIEW, F.SESSION_PRODUCT_VIEW)}
        self._online = RedisOnlineStore()
        self._pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="sink")

    def __call__(self, df: Any, batch_id: int) -> None:
        self.write(df.toArrow(), batch_id)

    def write(self, table: pa.Table, batch_id: int) -> BatchReport:
        started = time.monotonic()
        report = BatchReport(batch_id)
        kinds = table.column("kind")
        snapshots = snapshot_table(table.filter(pc.equal(kinds, SNAPSHOT)))
        quarantine = quarantine_table(table.filter(pc.equal(kinds, INVALID)),
                                      table.filter(pc.equal(kinds, LATE)))
        # The writes are independent I/O (S3, Redis): run them side by side.
        writes: list[Callable[[], Any]] = []
        online_writes: list[Callable[[], int]] = []
        if snapshots.num_rows:
            lake_rows = snapshots.select(events.LAKE_SCHEMA.names)
            writes.append(partial(self._write_parquet, self.settings.events_uri, lake_rows,
                                  "event_time", batch_id))
            for view, columns in ((F.SESSION_VIEW, SESSION_COLUMNS),
                                  (F.SESSION_PRODUCT_VIEW, SESSION_PRODUCT_COLUMNS)):
                writes.append(partial(self._write_parquet,
                                      definitions.archive_path(self.settings, view),
                                      snapshots.select(list(columns)), F.EVENT_TIMESTAMP,
                                      batch_id))
            online_writes = [partial(
                retry_while_unavailable,
                partial(write_latest, self._online, self.repo_config, view, snapshots),
                self.settings.stream_online_retry_s, report, view.name)
                for view in self._views.values()]
            report.events = snapshots.num_rows
            report.sessions = len(pc.unique(snapshots.column(F.SESSION_ID)))
        if quarantine.num_rows:
            writes.append(partial(self._write_parquet, self.settings.quarantine_uri, quarantine,
                                  "arrival_time", batch_id))
            reasons = pc.value_counts(quarantine.column(events.REASON)).to_pylist()
            report.quarantined = {r["values"]: r["counts"] for r in reasons}
        online = [self._pool.submit(write) for write in online_writes]
        for future in [self._pool.submit(write) for write in writes]:
            future.result()
        report.online_rows = sum(future.result() for future in online)
        if snapshots.num_rows:
            arrivals = pc.cast(snapshots.column("arrival_time"), pa.int64()).to_numpy() / 1e6
            report.freshness_s = (time.time() - arrivals).tolist()
        report.write_s = time.monotonic() - started
        self.reports[batch_id] = report
        return report

    # -- Parquet ------------------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = aws.s3_filesystem(self.settings)
        return self._fs

    def _write_parquet(self, uri: str, table: pa.Table, date_column: str,
                       batch_id: int) -> None:
        dates = pc.strftime(table.column(date_column), format="%Y-%m-%d")
        for date in pc.unique(dates).to_pylist():
            part = table.filter(pc.equal(dates, date))
            path = f"{aws.s3_key(uri)}/date={date}/batch-{self.query_tag}{batch_id:012d}.parquet"
            pq.write_table(part, path, filesystem=self.fs)

    @functools.cached_property
    def query_tag(self) -> str:
        """`<first 8 hex digits of the query id>-` from the checkpoint's metadata (written by
        Spark before the first batch), or "" when there is no checkpoint."""
        directory = self.settings.checkpoint_dir.rstrip("/")
        try:
            if directory.startswith("s3://"):
                with self.fs.open_input_stream(f"{aws.s3_key(directory)}/metadata") as stream:
                    text = stream.read()
            else:
                text = Path(directory, "metadata").read_bytes()
        except FileNotFoundError:  # anything else (S3 unreachable) fails the batch: retried
            return ""
        return json.loads(text.splitlines()[0])["id"].replace("-", "")[:8] + "-"

    # -- Redis (Feast online store) -------------------------------------------------------

    @property
    def repo_config(self) -> Any:
        if self._repo_config is None:
            self._repo_config = feature_repo.repo_config(
                self.settings, key_ttl_s=self.settings.online_ttl_s)
        return self._repo_config


# What a Redis restart or failover looks like to a client: refused or reset connections,
# timeouts, "LOADING" while the dataset is read back, "READONLY" from a demoted primary.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                     redis.ReadOnlyError)
REDIS_RETRY_LOG = "Redis unavailable writing"  # each retry's log line (the chaos suite counts)


def retry_while_unavailable(write: Callable[[], int], budget_s: float, report: BatchReport,
                            what: str, sleep: Callable[[float], None] = time.sleep,
                            clock: Callable[[], float] = time.monotonic) -> int:
    """`write()`, repeated with backoff while Redis is unavailable, for up to `budget_s`.
    Safe because online writes are idempotent (Feast skips rows it already holds)."""
    deadline = clock() + budget_s
    delays = aws.backoff_delays(base=0.1, cap=2.0)
    while True:
        try:
            return write()
        except REDIS_UNAVAILABLE as exc:
            if clock() >= deadline:
                raise
            report.online_retries += 1
            log.warning("batch %d: %s %s (%s); retrying", report.batch_id, REDIS_RETRY_LOG,
                        what, exc)
            sleep(next(delays))


def snapshot_table(rows: pa.Table) -> pa.Table:
    """Snapshot rows of the stateful step with their packed event unpacked: every lake,
    archive and online column."""
    values = unpack(rows.column("record").to_pylist(), EVENT_RECORD)
    values["user_session"] = rows.column("user_session")
    columns = {f.name: pa.array(values[f.name], f.type) for f in events.LAKE_SCHEMA}
    columns[F.SESSION_ID] = columns["user_session"]
    for name in (F.EVENT_TIMESTAMP, *F.SESSION_FEATURE_NAMES, *F.SESSION_PRODUCT_FEATURE_NAMES):
        columns[name] = rows.column(name)
    return pa.table(columns)


def quarantine_table(invalid: pa.Table, late: pa.Table) -> pa.Table:
    """Invalid events (packed with payload and reason) and late ones (packed events, whose
    payload is rebuilt with the contract) as one quarantine table."""
    parts = [unpack(invalid.column("record").to_pylist(), QUARANTINE_RECORD)]
    if late.num_rows:
        late_values = unpack(late.column("record").to_pylist(), EVENT_RECORD)
        late_values["user_session"] = late.column("user_session").to_pylist()
        frame = pd.DataFrame({name: late_values[name] for name in events.FIELD_NAMES})
        frame["event_time"] = pd.to_datetime(frame["event_time"], unit="us", utc=True)
        late_values[events.PAYLOAD] = [p.decode() for p in events.to_json(frame)]
        late_values[events.REASON] = [LATE] * late.num_rows
        late_values[events.DETAIL] = ["event time older than the watermark"] * late.num_rows
        parts.append(late_values)
    return pa.table({f.name: pa.array([v for part in parts for v in part[f.name]], f.type)
                     for f in events.QUARANTINE_SCHEMA})
