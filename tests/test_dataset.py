"""Point-in-time training sets through Feast, on real components: no leakage on a hand-made
history, and the November sample with October as history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from propensity import features as F
from propensity.batch.job import run as run_batch
from propensity.batch.request import BatchRun
from propensity.ops.pipelines import DatasetRequest, build_dataset
from propensity.ops.testing import isolated, write_csv
from propensity.samples import COSMETICS_NOVEMBER, COSMETICS_OCTOBER
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.streaming.job import run as run_stream
from propensity.streaming.options import StreamOptions
from propensity.training.dataset import LABEL
from tests.test_batch import distinct_events
from tests.test_streaming import send


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_session("propensity-tests", "local[2]")
    yield session
    session.stop()


def dataset(settings: Settings, out: Path, events: Path, *history: Path) -> pd.DataFrame:
    build_dataset(settings, DatasetRequest(out, events, history))
    return pd.read_parquet(out)


def _row(time: str, event_type: str, product: int, price: float, user: int, session: str
         ) -> list[str]:
    return [f"2019-10-0{time} UTC", event_type, str(product), "42", "shoes", "", str(price),
            str(user), session]


def hand_made(folder: Path) -> tuple[Path, Path]:
    """Day 1: user 7 buys in session A. Day 2: user 7 views, carts and buys in session B (with
    a tie, a repeat and an event after the purchase); new user 8 only views, in session C."""
    history = write_csv(folder / "day1.csv", [
        _row("1 10:00:00", "view", 1, 10.0, 7, "A"),
        _row("1 10:01:00", "cart", 1, 10.0, 7, "A"),
        _row("1 10:02:00", "purchase", 1, 10.0, 7, "A"),
    ])
    day2 = write_csv(folder / "day2.csv", [
        _row("2 09:00:00", "view", 2, 20.0, 7, "B"),
        _row("2 09:00:00", "view", 3, 30.0, 7, "B"),  # same second: still its own point
        _row("2 09:00:00", "view", 3, 30.0, 7, "B"),  # a repeat: counted once, no point
        _row("2 09:01:00", "cart", 2, 20.0, 7, "B"),
        _row("2 09:02:00", "purchase", 2, 20.0, 7, "B"),
        _row("2 09:03:00", "view", 3, 30.0, 7, "B"),  # after the purchase: no point
        _row("2 09:30:00", "view", 2, 20.0, 8, "C"),
    ])
    return history, day2


def test_no_feature_from_after_a_point_and_no_purchase_leaks(
        stack: Settings, spark: SparkSession, tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path)
    history, day2 = hand_made(tmp_path)
    points = dataset(settings, tmp_path / "set.parquet", day2, history)

    by_session = points.groupby(F.SESSION_ID)
    assert by_session.size().to_dict() == {"B": 3, "C": 1}
    assert by_session[LABEL].max().to_dict() == {"B": 1, "C": 0}
    b = points[points[F.SESSION_ID] == "B"].sort_values(F.EVENT_TIMESTAMP)
    # Session features as of each event, inclusive, and never the purchase.
    assert b["event_count"].tolist() == [1, 2, 3]
    assert b["purchase_count"].tolist() == [0, 0, 0]
    assert b["add_to_cart_count"].tolist() == [0, 0, 1]
    assert b[F.EVENT_TIMESTAMP].is_monotonic_increasing and b[F.EVENT_TIMESTAMP].is_unique
    # User features as of the end of day 1: session A's purchase, not B's.
    assert b[F.LIFETIME_PURCHASE_COUNT.name].tolist() == [1, 1, 1]
    assert b[F.LIFETIME_SESSION_COUNT.name].tolist() == [1, 1, 1]
    assert b[F.AVG_ORDER_VALUE_90D.name].tolist() == [10.0, 10.0, 10.0]
    assert (b[F.LAST_PURCHASE_AT.name] == pd.Timestamp("2019-10-01 10:02", tz="UTC")).all()
    assert b[F.DAYS_SINCE_LAST_PURCHASE.name].round(4).tolist() == [
        round((23 * 3600 - 120) / 86400, 4)] * 2 + [round((23 * 3600 - 60) / 86400, 4)]
    # Product 2 had no event before day 2 ended: nothing known about it at these points.
    assert b[F.VIEW_COUNT_30D.name].isna().all()
    # User 8 is new: no user features.
    c = points[points[F.SESSION_ID] == "C"]
    assert c[F.LIFETIME_PURCHASE_COUNT.name].isna().all()
    # Nothing dated after a point.
    for column in (F.LAST_PURCHASE_AT.name, "last_product_view_at"):
        known = points[column].notna()
        assert (points.loc[known, column] <= points.loc[known, F.EVENT_TIMESTAMP]).all()


def test_streamed_sessions_give_the_same_training_set_as_the_file(
        stack: Settings, spark: SparkSession, tmp_path: Path) -> None:
    """--lake (the streaming job's archive and lake, then the batch) equals --events FILE."""
    history, day2 = hand_made(tmp_path)
    from_file = dataset(isolated(stack, tmp_path / "file"), tmp_path / "file.parquet", day2,
                        history)

    settings = isolated(stack, tmp_path / "lake")
    for path in (history, day2):
        send(settings, path)
    run_stream(settings, StreamOptions(until_idle=True), spark)
    run_batch(settings, BatchRun(first=date(2019, 10, 1), last=date(2019, 10, 2)), spark)
    build_dataset(settings, DatasetRequest(tmp_path / "lake.parquet"))
    from_lake = pd.read_parquet(tmp_path / "lake.parquet")
    assert set(from_lake[F.SESSION_ID]) == {"A", "B", "C"}
    streamed = from_lake[from_lake[F.SESSION_ID] != "A"]
    key = [F.SESSION_ID, F.EVENT_TIMESTAMP]
    pd.testing.assert_frame_equal(
        streamed.sort_values(key).reset_index(drop=True)[from_file.columns],
        from_file.sort_values(key).reset_index(drop=True), check_dtype=False)


def test_november_with_october_as_history(stack: Settings, spark: SparkSession,
                                          tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path)
    points = dataset(settings, tmp_path / "november.parquet", COSMETICS_NOVEMBER, COSMETICS_OCTOBER)

    events = distinct_events(COSMETICS_NOVEMBER)
    first_purchase = events[events["event_type"] == "purchase"].groupby(
        "user_session")["event_time"].min()
    at = events["user_session"].map(first_purchase)
    before = events[at.isna() | (events["event_time"] < at)]
    up_to = events[at.isna() | (events["event_time"] <= at)]
    # Ties with the first purchase's second may fall either side of it.
    assert len(before) <= len(points) <= len(up_to) - first_purchase.size
    assert points["event_id"].is_unique
    assert set(points[F.SESSION_ID]) <= set(events["user_session"])
    labelled = points.groupby(F.SESSION_ID)[LABEL].max()
    assert labelled.sum() == len(set(labelled.index) & set(first_purchase.index))
    assert (points["purchase_count"] == 0).all()
    # History is used: returning users carry October's aggregates, as of a day before.
    assert points[F.LIFETIME_SESSION_COUNT.name].notna().mean() > 0.01
    for column in (F.LAST_PURCHASE_AT.name, "last_product_view_at"):
        known = points[column].notna()
        assert (points.loc[known, column] <= points.loc[known, F.EVENT_TIMESTAMP]).all()
