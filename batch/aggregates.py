"""User and product features as of the end of each day, computed in one pass over the lake.

A snapshot "as of day D" covers the events before the next midnight (UTC) and is stamped
`event_timestamp = D + 1 day, 00:00`: a training point at time t only joins snapshots of days
that ended by t. Rather than recompute everything once per day (a range backfill would rescan
the history once per day), the job computes per-entity daily increments once and runs
cumulative and range windows over the days. A row is emitted only on days an entity's values
change: days with activity, and the days an old event leaves a window (D + 7, 30, 90). The
latest row at or before any time therefore holds the exact values at that time.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as f

from propensity import features as F

DAY_US = 86_400_000_000
DAY = "day"  # days since 1970-01-01 (UTC)
ORDER_WINDOW_DAYS = 90
PRODUCT_WINDOW_DAYS = 30
PRICE_WINDOW_DAYS = 7


def day_number(value: date) -> int:
    return (value - date(1970, 1, 1)).days


def with_day(events: DataFrame) -> DataFrame:
    return events.withColumn(DAY, f.floor(f.unix_micros("event_time") / DAY_US).cast("int"))


def distinct_events(events: DataFrame, last_day: date) -> DataFrame:
    """Events up to the end of `last_day`, each identity once (the stream and an import may
    both have brought it)."""
    return with_day(events).where(f.col(DAY) <= day_number(last_day)).dropDuplicates(
        ["event_id"])


def _snapshot_time() -> Column:
    return f.timestamp_micros((f.col(DAY) + 1).cast("long") * DAY_US).alias(F.EVENT_TIMESTAMP)


def _by_day(key: str, days_back: int | None = None) -> Window:
    """Cumulative (days_back None) or the last `days_back` days including the current one."""
    ordered = Window.partitionBy(key).orderBy(DAY)
    if days_back is None:
        return ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return ordered.rangeBetween(-(days_back - 1), 0)


def _increments(parts: list[DataFrame], key: str, sums: list[str], maxes: list[str]
                ) -> DataFrame:
    """Per (entity, day) increments from several partial tables (missing columns as zero or
    null), one row per entity and day."""
    typed = {}
    for part in parts:
        for field in part.schema.fields:
            typed.setdefault(field.name, field.dataType)
    aligned = [part.select(key, DAY, *[
        (f.col(c) if c in part.columns else f.lit(0 if c in sums else None).cast(typed[c]))
        .alias(c) for c in (*sums, *maxes)]) for part in parts]
    union = aligned[0]
    for part in aligned[1:]:
        union = union.unionByName(part)
    return union.groupBy(key, DAY).agg(*[f.sum(c).alias(c) for c in sums],
                                       *[f.max(c).alias(c) for c in maxes])


def user_snapshots(events: DataFrame) -> DataFrame:
    """One row per user and day on which the user's features change (events: distinct, with
    DAY). Columns: user_id, DAY, event_timestamp, USER_FEATURES."""
    key = F.USER_ID
    sessions = (events.groupBy(key, "user_session").agg(f.min(DAY).alias(DAY))
                .groupBy(key, DAY).agg(f.count("*").alias("sessions")))
    purchases = events.where(f.col("event_type") == "purchase")
    orders = (purchases.groupBy(key, "user_session", DAY)
              .agg(f.count("*").alias("n"), f.sum("price").alias("value"),
                   f.max("event_time").alias("last_purchase"))
              .groupBy(key, DAY)
              .agg(f.sum("n").alias("purchases"), f.count("*").alias("orders"),
                   f.sum("value").alias("order_value"),
                   f.max("last_purchase").alias("last_purchase")))
    # A leaving order changes the 90-day average without any new event.
    order_exits = orders.select(key, (f.col(DAY) + ORDER_WINDOW_DAYS).alias(DAY))
    category = f.coalesce(f.nullif(f.col("category_code"), f.lit("")),
                          f.col("category_id").cast("string"))
    # Category counts only grow, so the preferred category as of a day is the maximum, over
    # every (category, day) so far, of (count reached, day reached, name).
    leaders = (purchases.where(category.isNotNull())
               .groupBy(key, category.alias("category"), DAY).agg(f.count("*").alias("n"))
               .withColumn("reached", f.sum("n").over(
                   Window.partitionBy(key, "category").orderBy(DAY).rowsBetween(
                       Window.unboundedPreceding, Window.currentRow)))
               .groupBy(key, DAY)
               .agg(f.max(f.struct("reached", DAY, "category")).alias("leader")))
    daily = _increments([sessions, orders, order_exits, leaders], key,
                        sums=["sessions", "purchases", "orders", "order_value"],
                        maxes=["last_purchase", "leader"])
    cumulative, last_90 = _by_day(key), _by_day(key, ORDER_WINDOW_DAYS)
    orders_90 = f.sum("orders").over(last_90)
    return daily.select(
        key, DAY, _snapshot_time(),
        f.sum("purchases").over(cumulative).cast("long").alias(F.LIFETIME_PURCHASE_COUNT.name),
        f.sum("sessions").over(cumulative).cast("long").alias(F.LIFETIME_SESSION_COUNT.name),
        f.when(orders_90 > 0, f.sum("order_value").over(last_90) / orders_90)
        .alias(F.AVG_ORDER_VALUE_90D.name),
        f.max("last_purchase").over(cumulative).alias(F.LAST_PURCHASE_AT.name),
        f.max("leader").over(cumulative).getField("category")
        .alias(F.PREFERRED_PRODUCT_CATEGORY.name),
    )


def product_snapshots(events: DataFrame) -> DataFrame:
    """One row per product and day on which its features change. Columns: product_id, DAY,
    event_timestamp, PRODUCT_FEATURES."""
    key = F.PRODUCT_ID
    activity = events.groupBy(key, DAY).agg(
        f.sum((f.col("event_type") == "purchase").cast("long")).alias("purchases"),
        f.sum((f.col("event_type") == "view").cast("long")).alias("views"),
        f.sum("price").alias("price_sum"), f.count("price").alias("prices"))
    exits = [activity.select(key, (f.col(DAY) + days).alias(DAY))
             for days in (PRICE_WINDOW_DAYS, PRODUCT_WINDOW_DAYS)]
    daily = _increments([activity, *exits], key,
                        sums=["purchases", "views", "price_sum", "prices"], maxes=[])
    last_30, last_7 = _by_day(key, PRODUCT_WINDOW_DAYS), _by_day(key, PRICE_WINDOW_DAYS)
    views_30, prices_7 = f.sum("views").over(last_30), f.sum("prices").over(last_7)
    purchases_30 = f.sum("purchases").over(last_30)
    return daily.select(
        key, DAY, _snapshot_time(),
        purchases_30.cast("long").alias(F.PURCHASE_COUNT_30D.name),
        views_30.cast("long").alias(F.VIEW_COUNT_30D.name),
        f.when(views_30 > 0, purchases_30 / views_30).alias(F.VIEW_TO_PURCHASE_RATE_30D.name),
        f.when(prices_7 > 0, f.sum("price_sum").over(last_7) / prices_7)
        .alias(F.AVG_PRICE_7D.name),
    )


def input_totals(events: DataFrame) -> dict[str, int]:
    """Counts of the input that the published snapshots must agree with (see checks.py)."""
    row = events.agg(
        f.countDistinct(F.USER_ID).alias("users"),
        f.countDistinct(F.PRODUCT_ID).alias("products"),
        f.sum((f.col("event_type") == "purchase").cast("long")).alias("purchases"),
        f.countDistinct(F.USER_ID, "user_session").alias("user_sessions"),
    ).first()
    return {k: int(v or 0) for k, v in row.asDict().items()}


def in_days(snapshots: DataFrame, first_day: date, last_day: date) -> DataFrame:
    return snapshots.where(f.col(DAY).between(day_number(first_day), day_number(last_day)))


def latest(snapshots: DataFrame, key: str, last_day: date) -> DataFrame:
    """Each entity's latest row as of the end of `last_day`."""
    upto = snapshots.where(f.col(DAY) <= day_number(last_day))
    newest = Window.partitionBy(key).orderBy(f.col(DAY).desc())
    return (upto.withColumn("_rank", f.row_number().over(newest)).where(f.col("_rank") == 1)
            .drop("_rank"))
