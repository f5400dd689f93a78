"""The date-partitioned Parquet datasets on S3, named once: the event lake, the session archive,
the quarantine and the prediction log keep a day's objects under `<uri>/date=YYYY-MM-DD/`.
The streaming job and the daily batch write them; the batch, training, Feast's offline reads
and the monitor read them through these functions (pyarrow only: no Spark).

What a reader sees of a day folder (the compaction protocol, propensity/compaction.py): S3 has
no atomic switch of many objects, so compaction writes its files under names no reader takes
(`compacted-<run>-...`), then commits them with one object, the folder's manifest
(`_compaction.json`: the run's outputs and the small objects they replace), then removes the
small ones. A reader takes the manifest's outputs and every object the manifest neither
replaces nor leaves uncommitted: before the commit it sees the small objects, after it the
compacted ones, never both, and objects written after the compaction started stay visible.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from pyarrow import fs as pafs

from propensity import aws
from propensity.settings import Settings

DATE_PARTITION = "date"
PARQUET = ".parquet"
MANIFEST = "_compaction.json"  # `_`: pyarrow, dask and Spark never take it for data
COMPACTED_PREFIX = "compacted-"


class Dataset(StrEnum):
    """The datasets kept in day folders (compaction, retention and forgetting name them so)."""

    LAKE = "lake"  # PROPENSITY_EVENTS_URI
    ARCHIVE = "archive"  # every feature view's offline rows, under PROPENSITY_FEATURES_URI
    QUARANTINE = "quarantine"  # PROPENSITY_QUARANTINE_URI
    PREDICTIONS = "predictions"  # the prediction log, PROPENSITY_PREDICTIONS_URI


def dataset_uri(settings: Settings, dataset: Dataset) -> str:
    """Where a dataset's day folders are (the archive: one tree per view below it)."""
    return {Dataset.LAKE: settings.events_uri, Dataset.ARCHIVE: settings.features_uri,
            Dataset.QUARANTINE: settings.quarantine_uri,
            Dataset.PREDICTIONS: settings.predictions_uri}[dataset]


def day_folder(prefix: str, day: date | str) -> str:
    """The key prefix (or path) of a day's objects under `prefix`."""
    folder = f"{prefix.rstrip('/')}/" if prefix else ""
    text = day if isinstance(day, str) else day.isoformat()
    return f"{folder}{DATE_PARTITION}={text}/"


def day_of(path: str) -> date | None:
    """The day of the `date=D` folder an object's path lies in, if any."""
    marker = f"{DATE_PARTITION}="
    part = next((p for p in path.split("/") if p.startswith(marker)), None)
    return date.fromisoformat(part[len(marker):]) if part else None


def archive_uri(settings: Settings, view: str) -> str:
    """Where one feature view's offline rows live (Parquet in day folders): Feast's source."""
    return f"{settings.features_uri.rstrip('/')}/{view}"


@dataclass(frozen=True)
class Manifest:
    """A day folder's committed compaction: the objects it wrote and the ones they replace."""

    run: str
    outputs: frozenset[str]
    replaced: frozenset[str]

    def to_json(self) -> bytes:
        return json.dumps({"run": self.run, "outputs": sorted(self.outputs),
                           "replaced": sorted(self.replaced)}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        return cls(doc["run"], frozenset(doc["outputs"]), frozenset(doc["replaced"]))


def visible_names(names: Iterable[str], manifest: Manifest | None) -> list[str]:
    """The object names of one folder a reader takes (see the module's docstring)."""
    if manifest is None:
        return [n for n in names if not n.startswith(COMPACTED_PREFIX)]
    return [n for n in names if n in manifest.outputs
            or not (n in manifest.replaced or n.startswith(COMPACTED_PREFIX))]


def filesystem_of(settings: Settings, uri: str) -> tuple[Any, str]:
    """The filesystem and root path of a dataset: S3 (or moto) for s3://, else local."""
    if uri.startswith("s3://"):
        return aws.s3_filesystem(settings), aws.s3_key(uri)
    return pafs.LocalFileSystem(), uri.rstrip("/")


def read_manifest(filesystem: Any, folder: str) -> Manifest | None:
    path = f"{folder.rstrip('/')}/{MANIFEST}"
    try:
        with filesystem.open_input_stream(path) as stream:
            return Manifest.from_json(stream.read())
    except FileNotFoundError:
        return None


def files_under(filesystem: Any, root: str) -> list[pafs.FileInfo]:
    """Every file below `root`, at any depth (none when `root` does not exist)."""
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    return [info for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
            if info.type == pafs.FileType.File]


def _by_folder(infos: Iterable[pafs.FileInfo]) -> dict[str, list[pafs.FileInfo]]:
    folders: dict[str, list[pafs.FileInfo]] = defaultdict(list)
    for info in infos:
        folders[info.path.rsplit("/", 1)[0]].append(info)
    return folders


def _visible(filesystem: Any, infos: Iterable[pafs.FileInfo]) -> list[tuple[str, int]]:
    found = []
    for folder, files in _by_folder(infos).items():
        names = {info.base_name: info for info in files}
        manifest = read_manifest(filesystem, folder) if MANIFEST in names else None
        found += [(names[n].path, names[n].size)
                  for n in visible_names((n for n in names if n.endswith(PARQUET)), manifest)]
    return sorted(found)


def visible_objects(filesystem: Any, root: str, until: date | None = None
                    ) -> list[tuple[str, int]]:
    """(path, size) of the Parquet objects a reader takes under `root`, in `date=D` folders
    with D <= until when `until` is given."""
    infos = [info for info in files_under(filesystem, root)
             if until is None or ((d := day_of(info.path)) is not None and d <= until)]
    return _visible(filesystem, infos)


def every_object(filesystem: Any, root: str) -> list[tuple[str, int]]:
    """(path, size) of every Parquet object under `root`, visible or not (compaction's inputs
    not yet removed, uncommitted outputs): what forgetting a shopper must rewrite."""
    return sorted((info.path, info.size) for info in files_under(filesystem, root)
                  if info.path.endswith(PARQUET))


def list_objects(settings: Settings, uri: str, until: date | None = None
                 ) -> list[tuple[str, int]]:
    """(path, size) of the Parquet objects a reader takes under `uri`, in `date=D` folders with
    D <= until."""
    filesystem, root = filesystem_of(settings, uri)
    return visible_objects(filesystem, root, until)


def lake_days(settings: Settings) -> list[date]:
    """The dates that have events in the lake."""
    days = {day_of(path) for path, _ in list_objects(settings, settings.events_uri)}
    return sorted(day for day in days if day is not None)


def day_objects(filesystem: Any, root: str, day: date) -> list[tuple[str, int]]:
    """(path, size) of the Parquet objects a reader takes in one day's folder."""
    return _visible(filesystem, files_under(filesystem, day_folder(root, day).rstrip("/")))


def day_dataset(settings: Settings, uri: str, days: Sequence[date]) -> ds.Dataset | None:
    """The Parquet objects of the `date=D` folders of `days` under `uri`; None when none has
    any."""
    filesystem, root = filesystem_of(settings, uri)
    found = [path for day in days for path, _ in day_objects(filesystem, root, day)]
    return ds.dataset(found, filesystem=filesystem, format="parquet") if found else None


def read_table(settings: Settings, uri: str) -> pa.Table | None:
    """A whole date-partitioned dataset (its `date` folders as a column) as an Arrow table;
    None when it has no object yet."""
    filesystem, root = filesystem_of(settings, uri)
    found = [path for path, _ in visible_objects(filesystem, root)]
    if not found:
        return None
    return ds.dataset(found, filesystem=filesystem, format="parquet", partitioning="hive",
                      partition_base_dir=root).to_table()
