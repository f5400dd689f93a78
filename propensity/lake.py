"""The date-partitioned Parquet datasets on S3, named once: the event lake, the session archive,
the quarantine and the prediction log keep a day's objects under `<uri>/date=YYYY-MM-DD/`.
The streaming job and the daily batch write them; the batch, training and the monitor read
them through these functions (pyarrow only: no Spark).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pyarrow.dataset as ds
from pyarrow import fs as pafs

from propensity import aws
from propensity.settings import Settings

DATE_PARTITION = "date"


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


def list_objects(settings: Settings, uri: str, until: date | None = None
                 ) -> list[tuple[str, int]]:
    """(path, size) of the Parquet objects under `uri`, in `date=D` folders with D <= until."""
    filesystem = aws.s3_filesystem(settings)
    root = aws.s3_key(uri)
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        day = day_of(info.path)
        if until is None or (day is not None and day <= until):
            found.append((info.path, info.size))
    return sorted(found)


def lake_days(settings: Settings) -> list[date]:
    """The dates that have events in the lake."""
    days = {day_of(path) for path, _ in list_objects(settings, settings.events_uri)}
    return sorted(day for day in days if day is not None)


def day_dataset(settings: Settings, uri: str, days: Sequence[date]) -> ds.Dataset | None:
    """The Parquet objects of the `date=D` folders of `days` under `uri`; None when none has
    any."""
    filesystem = aws.s3_filesystem(settings)
    found = []
    for day in days:
        folder = day_folder(aws.s3_key(uri), day).rstrip("/")
        if filesystem.get_file_info(folder).type == pafs.FileType.NotFound:
            continue
        found += sorted(info.path for info in filesystem.get_file_info(
            pafs.FileSelector(folder, recursive=True))
            if info.type == pafs.FileType.File and info.path.endswith(".parquet"))
    return ds.dataset(found, filesystem=filesystem, format="parquet") if found else None
