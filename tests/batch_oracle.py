"""An independent pandas computation of the daily batch's user and product features as of the
end of one day, straight from the definitions (no daily increments, no windows over days)."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from propensity import features as F


def snapshot_time(day: date) -> pd.Timestamp:
    return pd.Timestamp(day + timedelta(days=1), tz="UTC")


def user_features(events: pd.DataFrame, day: date) -> pd.DataFrame:
    """Distinct valid events -> one row per user with an event before the end of `day`."""
    end = snapshot_time(day)
    ev = events[events["event_time"] < end]
    rows = {}
    for user, mine in ev.groupby(F.USER_ID):
        bought = mine[mine["event_type"] == "purchase"]
        recent = bought[bought["event_time"] >= end - pd.Timedelta(days=90)]
        orders = recent.groupby(["user_session", recent["event_time"].dt.date])["price"].sum()
        category = bought["category_code"].where(
            bought["category_code"].fillna("") != "", bought["category_id"].astype("string"))
        preferred = None
        if category.notna().any():
            per = pd.DataFrame({"category": category, "day": bought["event_time"].dt.date}
                               ).dropna().groupby("category").agg(n=("day", "size"),
                                                                  last=("day", "max"))
            preferred = max(per.itertuples(), key=lambda r: (r.n, r.last, r.Index)).Index
        rows[user] = {
            F.LIFETIME_PURCHASE_COUNT.name: len(bought),
            F.LIFETIME_SESSION_COUNT.name: mine["user_session"].nunique(),
            F.AVG_ORDER_VALUE_90D.name: orders.mean() if len(orders) else None,
            F.LAST_PURCHASE_AT.name: bought["event_time"].max() if len(bought) else pd.NaT,
            F.PREFERRED_PRODUCT_CATEGORY.name: preferred,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(F.USER_ID)


def product_features(events: pd.DataFrame, day: date) -> pd.DataFrame:
    end = snapshot_time(day)
    ev = events[events["event_time"] < end]
    rows = {}
    for product, mine in ev.groupby(F.PRODUCT_ID):
        month = mine[mine["event_time"] >= end - pd.Timedelta(days=30)]
        week = mine[mine["event_time"] >= end - pd.Timedelta(days=7)]
        views = int((month["event_type"] == "view").sum())
        purchases = int((month["event_type"] == "purchase").sum())
        rows[product] = {
            F.PURCHASE_COUNT_30D.name: purchases,
            F.VIEW_COUNT_30D.name: views,
            F.VIEW_TO_PURCHASE_RATE_30D.name: purchases / views if views else None,
            F.AVG_PRICE_7D.name: week["price"].mean() if len(week) else None,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(F.PRODUCT_ID)
