"""Where a micro-batch's rows go, each destination behind one small interface:
`write(table, part)` writes one task's rows of one batch (`part`: the batch id, the task's
partition and the query's tag) and says what it wrote. Every write is idempotent per part: the
same part written again leaves the same result, so a batch replayed after a crash overwrites
itself.

The streaming sink (sinks.py) writes to four: the event lake, the session archive's two views,
the quarantine (dated Parquet objects on S3: `DatedParquet`) and the session views in the
online store (Redis in Feast's layout: `OnlineView`). ops/testing.py ships in-memory versions
that behave the same, so the sink and the job's stages have fast tests without moto or Redis;
the real-stack tests stay beside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from propensity import aws, events, feature_repo
from propensity import features as F
from propensity.feature_repo import definitions, redis_layout
from propensity.feature_repo.online import write_latest
from propensity.lake import archive_uri, day_folder
from propensity.settings import Settings

log = logging.getLogger("propensity.stream")


@dataclass(frozen=True)
class BatchPart:
    """One task's share of one micro-batch."""

    batch_id: int
    partition: int = 0
    tag: str = ""  # the checkpoint's query tag: a new checkpoint never overwrites an old one's

    @property
    def object_name(self) -> str:
        return f"batch-{self.tag}{self.batch_id:012d}-{self.partition:05d}.parquet"


@dataclass(frozen=True)
class Written:
    rows: int
    retries: int = 0  # writes repeated while the destination was unavailable


class Destination(Protocol):
    def write(self, table: pa.Table, part: BatchPart) -> Written: ...


def by_date(table: pa.Table, date_column: str) -> dict[str, pa.Table]:
    """The table's rows by the UTC date (YYYY-MM-DD) of `date_column`."""
    dates = pc.strftime(table.column(date_column), format="%Y-%m-%d")
    return {day: table.filter(pc.equal(dates, day)) for day in pc.unique(dates).to_pylist()}


class DatedParquet:
    """A dataset of Parquet objects in `date=D` folders under `uri`, by the date of
    `date_column`: one object per part and date, named by the part (rewritten whole when the
    part comes again). `columns`: what of the table it keeps (default: all)."""

    def __init__(self, settings: Settings, uri: str, date_column: str,
                 columns: tuple[str, ...] | None = None) -> None:
        self.settings, self.uri, self.date_column, self.columns = (settings, uri, date_column,
                                                                   columns)
        self._fs: Any = None

    def write(self, table: pa.Table, part: BatchPart) -> Written:
        rows = table.select(list(self.columns)) if self.columns else table
        if self._fs is None:
            self._fs = aws.s3_filesystem(self.settings)
        for day, rows_of_day in by_date(rows, self.date_column).items():
            pq.write_table(rows_of_day, day_folder(aws.s3_key(self.uri), day)
                           + part.object_name, filesystem=self._fs)
        return Written(rows.num_rows)


# What a Redis restart or failover looks like to a client: refused or reset connections,
# timeouts, "LOADING" while the dataset is read back, "READONLY" from a demoted primary.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                     redis.ReadOnlyError)
REDIS_RETRY_LOG = "Redis unavailable writing"  # each retry's log line (the chaos suite counts)


def retry_while_unavailable(write: Callable[[], int], budget_s: float, batch_id: int,
                            what: str, sleep: Callable[[float], None] = time.sleep,
                            clock: Callable[[], float] = time.monotonic) -> Written:
    """`write()`, repeated with backoff while Redis is unavailable, for up to `budget_s`.
    Safe because online writes are idempotent (rows Redis holds as new or newer are left)."""
    deadline = clock() + budget_s
    delays = aws.backoff_delays(base=0.1, cap=2.0)
    retries = 0
    while True:
        try:
            return Written(write(), retries)
        except REDIS_UNAVAILABLE as exc:
            if clock() >= deadline:
                raise
            retries += 1
            log.warning("batch %d: %s %s (%s); retrying", batch_id, REDIS_RETRY_LOG, what,
                        exc)
            sleep(next(delays))


class OnlineView:
    """One feature view in the online store: the latest row per entity of each write, left
    alone where Redis holds that instant or a later one; retried while Redis is away for up to
    PROPENSITY_STREAM_ONLINE_RETRY_S (Kinesis holds the backlog meanwhile)."""

    def __init__(self, settings: Settings, view: str) -> None:
        self.settings = settings
        self.view = definitions.feature_view(settings, view)
        self._config: Any = None
        self._client: Any = None

    def write(self, table: pa.Table, part: BatchPart) -> Written:
        if self._config is None:
            self._config = feature_repo.repo_config(self.settings,
                                                    key_ttl_s=self.settings.online_ttl_s)
            self._client = redis_layout.client(self._config.online_store)
        return retry_while_unavailable(
            lambda: write_latest(self._client, self._config, self.view, table),
            self.settings.stream_online_retry_s, part.batch_id, self.view.name)


@dataclass
class Destinations:
    """The streaming sink's destinations."""

    lake: Destination
    archive: dict[str, Destination]  # by session view
    quarantine: Destination
    online: dict[str, Destination] = field(default_factory=dict)  # by session view

    @classmethod
    def of(cls, settings: Settings) -> Destinations:
        """The real ones: S3 (or moto) and Redis, as the settings say."""
        return cls(
            lake=DatedParquet(settings, settings.events_uri, "event_time",
                              tuple(events.LAKE_SCHEMA.names)),
            archive={view: DatedParquet(settings, archive_uri(settings, view),
                                        F.EVENT_TIMESTAMP, columns)
                     for view, columns in F.ARCHIVE_COLUMNS.items()},
            quarantine=DatedParquet(settings, settings.quarantine_uri, events.ARRIVAL_TIME),
            online={view: OnlineView(settings, view) for view in F.ARCHIVE_COLUMNS})
