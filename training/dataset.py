"""Point-in-time training sets: prediction points, labels and every feature of the model's
feature service as of each point, joined through Feast's historical retrieval.

A prediction point is a valid, de-duplicated event of a session before the session's first
purchase; its timestamp is that event's snapshot time, so the join sees the features as of the
event, inclusive, and nothing later; the label is 1 when the session has a purchase.

Two sources of points:
- a REES46 file: its events go through the event contract and the streaming job's own fold
  (`features.snapshots`) into a session archive of the training set's own; the user and
  product features come from the daily batch, run over the file's days (with any history
  files imported into the lake) first;
- the lake: the streaming job's session archive and event lake, as they are.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from propensity import events, feature_repo
from propensity import features as F
from propensity.feature_repo import definitions
from propensity.feature_repo.retrieval import historical_features
from propensity.lake import archive_uri, read_table
from propensity.settings import Settings

LABEL = "label"
POINT_COLUMNS = (F.SESSION_ID, F.USER_ID, F.PRODUCT_ID, "event_id", "event_type",
                 "event_time", F.EVENT_TIMESTAMP)


class DatasetError(ValueError):
    """Input that yields no usable training or evaluation set."""


@dataclass
class DatasetSummary:
    points: int = 0
    sessions: int = 0
    positive_sessions: int = 0
    positive_points: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    out: str = ""

    def format(self) -> str:
        rate = self.positive_points / self.points if self.points else 0.0
        return (f"{self.points} points from {self.sessions} sessions "
                f"({self.positive_sessions} with a purchase); positive rate {rate:.3f}; "
                f"invalid rows {sum(self.invalid.values())} {self.invalid or ''} -> {self.out}")


def prediction_points(snapshots: pd.DataFrame) -> pd.DataFrame:
    """From per-event snapshots (POINT_COLUMNS at least): the events before their session's
    first purchase, labelled with whether the session has one."""
    ordered = snapshots.sort_values([F.SESSION_ID, F.EVENT_TIMESTAMP], kind="stable")
    is_purchase = (ordered["event_type"] == "purchase").to_numpy()
    purchases_so_far = pd.Series(is_purchase, index=ordered.index).groupby(
        ordered[F.SESSION_ID]).cumsum()
    has_purchase = pd.Series(is_purchase, index=ordered.index).groupby(
        ordered[F.SESSION_ID]).transform("any")
    before_first = (purchases_so_far == 0).to_numpy()
    points = ordered.loc[before_first, list(POINT_COLUMNS)].copy()
    points[LABEL] = has_purchase[before_first].astype(np.int8).to_numpy()
    return points.reset_index(drop=True)


def _write_archive(snapshots: pd.DataFrame, folder: Path) -> None:
    """The session views' offline rows, as the streaming job archives them."""
    for view, columns in F.ARCHIVE_COLUMNS.items():
        (folder / view).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(snapshots[list(columns)], preserve_index=False)
        pq.write_table(table, folder / view / "part-0.parquet")


def with_request_time_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Adds the features derived from stored times at each point's moment."""
    def seconds(column: str) -> np.ndarray:  # since the epoch; NaN for NaT, any time unit
        since = pd.to_datetime(frame[column], utc=True) - pd.Timestamp(0, tz="UTC")
        return (since / pd.Timedelta(seconds=1)).to_numpy(np.float64)

    derived = F.request_time_features(seconds(F.LAST_PURCHASE_AT.name),
                                      seconds("last_product_view_at"),
                                      seconds(F.EVENT_TIMESTAMP))
    return frame.assign(**derived)


def from_file(settings: Settings, path: str | Path, work: Path
              ) -> tuple[pd.DataFrame, events.Validated]:
    """Points with features for a REES46 file (its days must be in the batch's snapshots),
    and the file through the event contract."""
    checked = events.validate_file(path)
    snapshots = F.snapshots(checked.valid, settings.session_timeout_s)
    archive = work / "archive"
    _write_archive(snapshots, archive)
    # A Feast registry of the training set's own: the session views read `archive`, the user
    # and product views the batch's offline store.
    local = settings.model_copy(update={"feast_registry": str(work / "registry.db")})
    store = feature_repo.store(local)
    store.apply(definitions.build(local, session_archive=str(archive)))
    return historical_features(store, local, prediction_points(snapshots)), checked


def from_lake(settings: Settings) -> pd.DataFrame:
    """Points with features for the streamed sessions in the lake and the session archive."""
    archive = read_table(settings, archive_uri(settings, F.SESSION_VIEW))
    lake = read_table(settings, settings.events_uri)
    if archive is None or lake is None:
        raise FileNotFoundError("no session archive or event lake yet: run the streaming job")
    snapshots = archive.select([F.SESSION_ID, F.USER_ID, "event_id", "event_time",
                                F.EVENT_TIMESTAMP]).to_pandas()
    kinds = (lake.select(["event_id", "event_type", F.PRODUCT_ID]).to_pandas()
             .drop_duplicates("event_id"))
    snapshots = snapshots.drop_duplicates("event_id").merge(kinds, on="event_id",
                                                            validate="one_to_one")
    return historical_features(feature_repo.apply(settings), settings,
                               prediction_points(snapshots))


def file_points(settings: Settings, files: list[Path]
                ) -> list[tuple[pd.DataFrame, events.Validated]]:
    """Points with every model feature for each of `files`, and the file through the event
    contract (its valid events and invalid rows). The daily batch must have run over the files'
    days (and their history) first: ops/pipelines.py runs it."""
    out = []
    for path in files:
        with tempfile.TemporaryDirectory(prefix="propensity-dataset-") as work:
            frame, checked = from_file(settings, path, Path(work))
        out.append((with_request_time_features(frame), checked))
    return out


def save(frame: pd.DataFrame, out: Path, invalid: dict[str, int] | None = None
         ) -> DatasetSummary:
    """Writes the points to `out` (Parquet) and says what they hold."""
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    return DatasetSummary(points=len(frame), sessions=frame[F.SESSION_ID].nunique(),
                          positive_sessions=int(frame.groupby(F.SESSION_ID)[LABEL].max().sum()),
                          positive_points=int(frame[LABEL].sum()), invalid=invalid or {},
                          out=str(out))
