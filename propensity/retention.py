"""Retention: a dataset keeps a day's objects for its PROPENSITY_<DATASET>_RETENTION_DAYS
after the day ends (0: forever). On AWS the S3 lifecycle rules (terraform/main.tf, with the
same defaults: propensity/retention_days.json) expire them by the objects' age; `propensity
retention` removes expired day folders by their date, anywhere (the local stack, or AWS before
the lifecycle's daily pass).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from propensity.lake import Dataset, dataset_uri, day_of, files_under, filesystem_of
from propensity.settings import Settings


def retention_days(settings: Settings, dataset: Dataset) -> int:
    return getattr(settings, f"{dataset.value}_retention_days")


def expired(day: date, keep_days: int, today: date) -> bool:
    """Whether a day's objects are past their retention on `today` (0 keeps them forever)."""
    return keep_days > 0 and day + timedelta(days=keep_days) < today


@dataclass(frozen=True)
class Expired:
    dataset: Dataset
    folder: str  # a day folder
    objects: int

    def format(self, removed: bool) -> str:
        verb = "removed" if removed else "would remove"
        return f"{self.dataset}: {verb} {self.folder} ({self.objects} objects)"


def expired_folders(settings: Settings, dataset: Dataset, today: date) -> list[Expired]:
    """The day folders of a dataset past its retention (the archive's, in every view)."""
    keep = retention_days(settings, dataset)
    if keep == 0:
        return []
    counts: dict[str, int] = defaultdict(int)
    for info in files_under(*filesystem_of(settings, dataset_uri(settings, dataset))):
        day = day_of(info.path)
        if day is not None and expired(day, keep, today):
            counts[info.path.rsplit("/", 1)[0]] += 1
    return [Expired(dataset, folder, n) for folder, n in sorted(counts.items())]


def apply(settings: Settings, datasets: list[Dataset], today: date | None = None,
          dry_run: bool = False) -> list[Expired]:
    """Removes (or, dry, lists) the expired day folders of `datasets`."""
    today = today or datetime.now(UTC).date()
    found = [e for dataset in datasets for e in expired_folders(settings, dataset, today)]
    if not dry_run:
        for item in found:
            _remove_folder(settings, item)
    return found


def _remove_folder(settings: Settings, item: Expired) -> None:
    filesystem, _ = filesystem_of(settings, dataset_uri(settings, item.dataset))
    filesystem.delete_dir(item.folder)
