"""An independent, vectorised pandas computation of every snapshot the fold produces.

It shares nothing with propensity.features but the names: cumulative sums, group-wise
forward fills and duplicate masks instead of a per-event fold. Tests compare the two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from propensity import features as F


def expected_snapshots(events: pd.DataFrame, timeout_s: float) -> pd.DataFrame:
    df = events.drop_duplicates("event_id").copy()  # repeats count once
    df["_arrival"] = np.arange(len(df))
    df = df.sort_values(["user_session", "event_time", "_arrival"], kind="stable")
    t = df["event_time"].astype("datetime64[us, UTC]").astype(np.int64)
    gap = t.groupby(df["user_session"]).diff()
    df["_segment"] = (gap > timeout_s * 1e6).astype(int).groupby(df["user_session"]).cumsum()
    session = [df["user_session"], df["_segment"]]
    product = [*session, df["product_id"]]
    is_view = (df["event_type"] == "view").astype(int)
    is_cart = (df["event_type"] == "cart").astype(int)
    is_remove = (df["event_type"] == "remove_from_cart").astype(int)
    is_purchase = (df["event_type"] == "purchase").astype(int)

    def cum(values: pd.Series, keys: list[pd.Series] = session) -> pd.Series:
        return values.groupby(keys).cumsum()

    first_view = (is_view == 1) & ~df.assign(v=is_view).duplicated(
        ["user_session", "_segment", "product_id", "v"])
    first_cart = (is_cart == 1) & ~df.assign(c=is_cart).duplicated(
        ["user_session", "_segment", "product_id", "c"])
    views = cum(is_view)
    view_price = cum(df["price"] * is_view)
    position = df.groupby(session).cumcount()
    snapshot_us = (t - position).groupby(session).cummax() + position
    latest = pd.to_datetime(t.groupby(session).cummax(), unit="us", utc=True)
    view_time = pd.Series(np.where(is_view == 1, t, np.nan), index=df.index)

    out = pd.DataFrame({
        F.SESSION_ID: df["user_session"],
        F.USER_ID: df["user_id"],
        F.PRODUCT_ID: df["product_id"],
        "event_id": df["event_id"],
        F.EVENT_TIMESTAMP: pd.to_datetime(snapshot_us, unit="us", utc=True),
        "event_count": position + 1,
        "view_count": views,
        "add_to_cart_count": cum(is_cart),
        "remove_from_cart_count": cum(is_remove),
        "purchase_count": cum(is_purchase),
        "distinct_products_viewed": cum(first_view.astype(int)),
        "distinct_products_carted": cum(first_cart.astype(int)),
        "session_duration_seconds": (t - t.groupby(session).cummin()) / 1e6,
        "cart_value": cum(df["price"] * (is_cart - is_remove)),
        "avg_viewed_price": (view_price / views).where(views > 0),
        "hour_of_day": latest.dt.hour,
        "is_weekend": latest.dt.dayofweek >= 5,
        "last_event_type": df["event_type"],
        "device_type": df["device_type"].groupby(session).ffill(),
        "channel": df["channel"].groupby(session).ffill(),
        "product_views_in_session": cum(is_view, product),
        "last_product_view_at": pd.to_datetime(
            view_time.groupby(product).cummax().groupby(product).ffill(), unit="us", utc=True),
        "product_in_cart": cum(is_cart - is_remove, product) > 0,
    })
    return out.reset_index(drop=True)


def assert_same_snapshots(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal as sets of rows keyed by event id, column by column."""
    columns = [F.SESSION_ID, F.USER_ID, F.PRODUCT_ID, F.EVENT_TIMESTAMP,
               *F.SESSION_FEATURE_NAMES, *F.SESSION_PRODUCT_FEATURE_NAMES]
    got = got.set_index("event_id").sort_index()
    expected = expected.set_index("event_id").sort_index()
    assert got.index.equals(expected.index), "different events"
    for column in columns:
        left, right = got[column], expected[column]
        if column in (F.EVENT_TIMESTAMP, "last_product_view_at"):
            left, right = (pd.to_datetime(x, utc=True).astype("datetime64[ns, UTC]")
                           for x in (left, right))
        if column in ("device_type", "channel", "last_event_type"):
            left, right = left.astype(object).where(left.notna()), right.astype(object).where(
                right.notna())
        pd.testing.assert_series_equal(left, right, check_dtype=False, check_names=False,
                                       check_exact=False, rtol=1e-9, obj=column)
