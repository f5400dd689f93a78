"""Compaction of a closed day: the streaming job writes a lake object, two archive objects and
sometimes a quarantine object per micro-batch and day (tens of thousands a day at a 2 s
trigger); compaction rewrites one day's objects of a dataset into a few files of about the
target size (PROPENSITY_COMPACTION_TARGET_MB), sorted for their readers.

The protocol (the readers' side is in propensity/lake.py):
1. finish what an earlier run left: remove the objects its committed manifest replaced and the
   uncommitted outputs of a crashed run (no reader takes either);
2. read the objects a reader takes now; nothing to do when they are already as few as their
   size needs;
3. write the sorted rows as `compacted-<run>-NNNNN.parquet` (no reader takes them yet) and
   check that they hold exactly the rows read;
4. commit: one PUT of the folder's manifest naming the outputs and the objects they replace;
5. remove the replaced objects.
A crash anywhere leaves each row visible exactly once, and a rerun completes the day. Objects
the streaming job writes into the folder meanwhile are not replaced: they stay visible. One
compaction of a folder at a time (the daily batch's, or an operator's).

A day is rewritten in memory (its rows are sorted as a whole): a day of the lake must fit in
the memory of the host that compacts it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from propensity import aws, events
from propensity import features as F
from propensity.lake import (
    COMPACTED_PREFIX,
    MANIFEST,
    PARQUET,
    Dataset,
    Manifest,
    archive_uri,
    dataset_uri,
    day_folder,
    files_under,
    filesystem_of,
    read_manifest,
    visible_names,
)
from propensity.predictions import ANSWERED_AT
from propensity.settings import Settings

log = logging.getLogger("propensity.compaction")

MB = 1 << 20
# Objects read or removed at once (each a round trip to S3).
IO_THREADS = 16


@dataclass(frozen=True)
class Layout:
    """One compactable tree of day folders and the order its readers want the rows in."""

    dataset: Dataset
    uri: str
    sort_by: tuple[str, ...]


# How a day's rows are sorted for their readers (the archive: by session, then time).
SORTED_BY = {Dataset.LAKE: ("user_session", "event_time", "event_id"),
             Dataset.QUARANTINE: (events.ARRIVAL_TIME,),
             Dataset.PREDICTIONS: (ANSWERED_AT,)}


def layouts(settings: Settings, dataset: Dataset) -> list[Layout]:
    """The trees of a dataset: the archive has one per session view (the batch's views hold
    one object per day already)."""
    if dataset is Dataset.ARCHIVE:
        return [Layout(dataset, archive_uri(settings, view), (F.SESSION_ID, F.EVENT_TIMESTAMP))
                for view in F.ARCHIVE_COLUMNS]
    return [Layout(dataset, dataset_uri(settings, dataset), SORTED_BY[dataset])]


def closed_at(settings: Settings, day: date) -> datetime:
    """When no more rows of `day` are written: its end plus the late events' allowance."""
    return (datetime.combine(day + timedelta(days=1), time(), UTC)
            + timedelta(seconds=settings.watermark_delay_s))


def is_closed(settings: Settings, day: date, now: datetime | None = None) -> bool:
    return (now or datetime.now(UTC)) >= closed_at(settings, day)


@dataclass(frozen=True)
class Compacted:
    """What compacting one tree's day did."""

    uri: str
    day: date
    objects_before: int
    objects_after: int
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    removed_leftovers: int = 0  # from an earlier run that stopped midway

    def format(self) -> str:
        if self.objects_before == self.objects_after and not self.rows:
            done = "nothing to do"
        else:
            done = (f"{self.objects_before:,} objects ({self.bytes_before / MB:.1f} MB) -> "
                    f"{self.objects_after:,} ({self.bytes_after / MB:.1f} MB), "
                    f"{self.rows:,} rows")
        leftovers = (f"; removed {self.removed_leftovers} left by an earlier run"
                     if self.removed_leftovers else "")
        return f"{self.uri} {self.day}: {done}{leftovers}"


class NotClosed(ValueError):
    """The day may still receive rows."""


def outputs_needed(total_bytes: int, target_bytes: int) -> int:
    return max(1, math.ceil(total_bytes / target_bytes))


def row_slices(rows: int, files: int) -> list[tuple[int, int]]:
    """(offset, length) of `files` nearly equal runs of `rows`."""
    size = math.ceil(rows / files) if rows else 0
    return [(start, min(size, rows - start)) for start in range(0, rows, size)] if size else []


def compact_day(settings: Settings, layout: Layout, day: date, *,
                now: datetime | None = None, run: str | None = None,
                after_write: Callable[[], None] | None = None,
                after_commit: Callable[[], None] | None = None) -> Compacted:
    """Compacts one closed day of one tree (see the module's docstring). `after_write` and
    `after_commit` are called between the protocol's steps (the tests' crash points)."""
    if not is_closed(settings, day, now):
        raise NotClosed(f"{day} is not closed until {closed_at(settings, day):%Y-%m-%d %H:%M} "
                        "UTC (its end plus PROPENSITY_WATERMARK_DELAY_S): compact it after")
    filesystem, root = filesystem_of(settings, layout.uri)
    folder = day_folder(root, day).rstrip("/")
    sizes = _folder_sizes(filesystem, folder)
    manifest = read_manifest(filesystem, folder) if MANIFEST in sizes else None
    parquet = sorted(n for n in sizes if n.endswith(PARQUET))
    visible = visible_names(parquet, manifest)
    leftovers = [n for n in parquet if n not in visible]
    _remove(settings, filesystem, folder, leftovers)
    before = sum(sizes[n] for n in visible)
    target = settings.compaction_target_mb * MB
    files = outputs_needed(before, target)
    if len(visible) <= files:
        return Compacted(layout.uri, day, len(visible), len(visible),
                         removed_leftovers=len(leftovers))

    table = _read(filesystem, folder, visible)
    order = [(c, "ascending") for c in layout.sort_by if c in table.column_names]
    table = table.sort_by(order) if order else table
    run = run or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    outputs = []
    for k, (offset, length) in enumerate(row_slices(table.num_rows, files)):
        name = f"{COMPACTED_PREFIX}{run}-{k:05d}{PARQUET}"
        pq.write_table(table.slice(offset, length), f"{folder}/{name}", filesystem=filesystem,
                       compression="zstd")
        outputs.append(name)
    written = sum(_rows(filesystem, f"{folder}/{n}") for n in outputs)
    if written != table.num_rows:
        raise RuntimeError(f"{folder}: the compacted files hold {written} rows, the objects "
                           f"they replace {table.num_rows}; nothing committed")
    if after_write:
        after_write()
    replaced = frozenset(visible) | (manifest.replaced if manifest else frozenset())
    with filesystem.open_output_stream(f"{folder}/{MANIFEST}") as stream:
        stream.write(Manifest(run, frozenset(outputs), replaced).to_json())
    if after_commit:
        after_commit()
    _remove(settings, filesystem, folder, visible)
    after = sum(_folder_sizes(filesystem, folder).get(n, 0) for n in outputs)
    result = Compacted(layout.uri, day, len(visible), len(outputs), table.num_rows, before,
                       after, len(leftovers))
    log.info("compacted %s", result.format())
    return result


def compact(settings: Settings, datasets: list[Dataset], day: date,
            now: datetime | None = None) -> list[Compacted]:
    """Compacts `day` of each tree of `datasets`."""
    return [compact_day(settings, layout, day, now=now)
            for dataset in datasets for layout in layouts(settings, dataset)]


def _folder_sizes(filesystem: Any, folder: str) -> dict[str, int]:
    return {info.base_name: info.size for info in files_under(filesystem, folder)}


def _read(filesystem: Any, folder: str, names: list[str]) -> pa.Table:
    def read(name: str) -> pa.Table:
        with filesystem.open_input_file(f"{folder}/{name}") as handle:
            return pq.ParquetFile(handle).read()

    with ThreadPoolExecutor(IO_THREADS) as pool:  # small objects: S3's latency, not bytes
        tables = list(pool.map(read, names))
    return pa.concat_tables(tables, promote_options="permissive")


def _rows(filesystem: Any, path: str) -> int:
    with filesystem.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _remove(settings: Settings, filesystem: Any, folder: str, names: list[str]) -> None:
    """Removes objects of a folder: on S3 a thousand a request, elsewhere one by one."""
    paths = [f"{folder}/{name}" for name in names]
    if isinstance(filesystem, pafs.S3FileSystem):
        aws.delete_keys(settings, paths)
        return
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # gone already: what was wanted
            filesystem.delete_file(path)
