"""Features: defined once here, used by streaming, batch, training and serving.

Session features (below, first) come from the streaming fold; user and product features
(further down) from the daily batch (batch/aggregates.py); request-time features are derived
at the point of use from stored timestamps (`request_time_features`).

A session's features are a fold over its events in event-time order (`SessionAccumulator`).
The streaming job runs the fold incrementally, keeping the accumulator in Spark state; training
runs the very same fold over historical events (`snapshots`); the Feast feature views and the
scorer take names and types from the specs below.

Rules the fold applies, so that results do not depend on how events are batched:
- a repeated event (same identity) counts once;
- a gap longer than the session timeout starts the session afresh (the state would have
  expired by then);
- each event yields a snapshot of the features as of that event, stamped
  `event_timestamp = max(event_time, previous snapshot + 1 us)`: strictly increasing within a
  session, so a point-in-time join never sees a later event (ties in the raw data's one-second
  timestamps included), and an event that arrives out of order never backdates information.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

DEFAULT_SESSION_TIMEOUT_S = 30 * 60

# Entity join keys and feature view names, shared with feature_repo/ and the scorer.
SESSION_ID = "session_id"
USER_ID = "user_id"
PRODUCT_ID = "product_id"
SESSION_VIEW = "session_features"
SESSION_PRODUCT_VIEW = "session_product_features"
USER_VIEW = "user_features"
PRODUCT_VIEW = "product_features"
MODEL_SERVICE = "propensity_model"  # the Feast feature service the model reads
EVENT_TIMESTAMP = "event_timestamp"


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # int64 | float64 | string | bool | timestamp
    description: str
    # Domain knowledge the model is held to: +1 when more of it never means less purchase
    # intent, -1 when it never means more (a LightGBM monotone constraint), 0 when unsure.
    monotone: int = 0
    # A money amount: the model's price-noise check perturbs these together.
    currency: bool = False


SESSION_FEATURES: tuple[Feature, ...] = (
    Feature("event_count", "int64", "events so far", monotone=1),
    Feature("view_count", "int64", "view events"),
    Feature("add_to_cart_count", "int64", "cart events", monotone=1),
    Feature("remove_from_cart_count", "int64", "remove_from_cart events"),
    Feature("purchase_count", "int64", "purchase events"),
    Feature("distinct_products_viewed", "int64", "products viewed at least once"),
    Feature("distinct_products_carted", "int64", "products added to the cart at least once",
            monotone=1),
    Feature("session_duration_seconds", "float64", "latest minus first event time", monotone=1),
    Feature("cart_value", "float64", "price of cart adds minus price of removals",
            monotone=1, currency=True),
    Feature("avg_viewed_price", "float64", "mean price of viewed items (price level)",
            currency=True),
    Feature("hour_of_day", "int64", "UTC hour of the latest event"),
    Feature("is_weekend", "bool", "the latest event falls on a Saturday or Sunday (UTC)"),
    Feature("last_event_type", "string", "type of the latest event"),
    Feature("device_type", "string", "device of the latest event that had one"),
    Feature("channel", "string", "channel of the latest event that had one"),
)
SESSION_PRODUCT_FEATURES: tuple[Feature, ...] = (
    Feature("product_views_in_session", "int64", "views of this product in the session"),
    Feature("last_product_view_at", "timestamp",
            "time of the latest view of this product (the scorer derives time since)"),
    Feature("product_in_cart", "bool", "added to the cart more often than removed",
            monotone=1),
)

# Daily batch features, as of the end of a day (snapshot time = the next midnight, UTC). An
# "order" is one session's purchases on one day; a category is category_code, or category_id
# when the code is empty.
LIFETIME_PURCHASE_COUNT = Feature("lifetime_purchase_count", "int64", "purchase events so far",
                                  monotone=1)
LIFETIME_SESSION_COUNT = Feature("lifetime_session_count", "int64", "sessions so far")
AVG_ORDER_VALUE_90D = Feature("avg_order_value_90d", "float64",
                              "mean order value over the last 90 days (None: no order)",
                              currency=True)
LAST_PURCHASE_AT = Feature("last_purchase_at", "timestamp",
                           "time of the latest purchase (days since it is derived at use)")
PREFERRED_PRODUCT_CATEGORY = Feature(
    "preferred_product_category", "string",
    "most purchased category; ties go to the one that reached the count last, then by name")
USER_FEATURES: tuple[Feature, ...] = (
    LIFETIME_PURCHASE_COUNT, LIFETIME_SESSION_COUNT, AVG_ORDER_VALUE_90D, LAST_PURCHASE_AT,
    PREFERRED_PRODUCT_CATEGORY,
)
PURCHASE_COUNT_30D = Feature("purchase_count_30d", "int64", "purchases in the last 30 days")
VIEW_COUNT_30D = Feature("view_count_30d", "int64", "views in the last 30 days")
VIEW_TO_PURCHASE_RATE_30D = Feature("view_to_purchase_rate_30d", "float64",
                                    "purchases per view, last 30 days (None: no view)")
AVG_PRICE_7D = Feature("avg_price_7d", "float64",
                       "mean price over the product's events of the last 7 days (None: none)",
                       currency=True)
PRODUCT_FEATURES: tuple[Feature, ...] = (
    PURCHASE_COUNT_30D, VIEW_COUNT_30D, VIEW_TO_PURCHASE_RATE_30D, AVG_PRICE_7D,
)

# Derived where they are used, from a stored time and the moment of use (the prediction
# point in training, the request in serving), so they never go stale in a store.
DAYS_SINCE_LAST_PURCHASE = Feature("days_since_last_purchase", "float64",
                                   "days from the user's latest purchase to now", monotone=-1)
SECONDS_SINCE_LAST_PRODUCT_VIEW = Feature(
    "seconds_since_last_product_view", "float64",
    "seconds from the latest view of the product in this session to now", monotone=-1)
REQUEST_TIME_FEATURES: tuple[Feature, ...] = (DAYS_SINCE_LAST_PURCHASE,
                                               SECONDS_SINCE_LAST_PRODUCT_VIEW)

SESSION_FEATURE_NAMES = tuple(f.name for f in SESSION_FEATURES)
SESSION_PRODUCT_FEATURE_NAMES = tuple(f.name for f in SESSION_PRODUCT_FEATURES)
# The session views' rows in the offline archive (one per event), as the streaming job writes
# them and training's own archive of a file's sessions repeats them.
SESSION_COLUMNS = (SESSION_ID, USER_ID, "event_id", "event_time", EVENT_TIMESTAMP,
                   *SESSION_FEATURE_NAMES)
SESSION_PRODUCT_COLUMNS = (SESSION_ID, PRODUCT_ID, "event_id", EVENT_TIMESTAMP,
                           *SESSION_PRODUCT_FEATURE_NAMES)
ARCHIVE_COLUMNS = {SESSION_VIEW: SESSION_COLUMNS, SESSION_PRODUCT_VIEW: SESSION_PRODUCT_COLUMNS}

# The fields of an event the fold reads, in the order of `EventTuple`.
EVENT_FIELDS = ("event_time", "event_type", "product_id", "price", "user_id", "device_type",
                "channel", "event_id")
EventTuple = tuple[int, str, int, float, int, str | None, str | None, str]  # time in us

_STATE_VERSION = 1


def hash64(event_id: str) -> int:
    """A signed 64-bit digest of an event identity, for compact de-duplication sets."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big",
                          signed=True)


class SessionAccumulator:
    """The running state of one session; `add` folds in one event."""

    __slots__ = (
        "add_to_cart_count", "cart_value", "channel", "device_type", "distinct_carted",
        "distinct_viewed", "event_count", "first_us", "last_event_type", "last_snapshot_us",
        "last_us", "products", "purchase_count", "remove_from_cart_count", "seen", "user_id",
        "view_count", "view_price_sum",
    )

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.event_count = self.view_count = self.add_to_cart_count = 0
        self.remove_from_cart_count = self.purchase_count = 0
        self.distinct_viewed = self.distinct_carted = 0
        self.first_us = self.last_us = self.last_snapshot_us = 0
        self.view_price_sum = self.cart_value = 0.0
        self.last_event_type: str | None = None
        self.device_type: str | None = None
        self.channel: str | None = None
        # product id -> [views, last view time in us (0: never), cart adds, removals]
        self.products: dict[int, list[int]] = {}
        self.seen: set[int] = set()

    # -- the fold -------------------------------------------------------------------------

    def add(self, event: EventTuple) -> int | None:
        """Fold in one event; returns its snapshot time in us, or None for a repeat."""
        time_us, event_type, product_id, price, user_id, device_type, channel, event_id = event
        digest = hash64(event_id)
        if digest in self.seen:
            return None
        self.seen.add(digest)
        if self.event_count == 0:
            self.first_us = self.last_us = time_us
        self.event_count += 1
        product = self.products.get(product_id)
        if product is None:
            product = self.products[product_id] = [0, 0, 0, 0]
        if event_type == "view":
            self.view_count += 1
            self.view_price_sum += price
            self.distinct_viewed += product[0] == 0
            product[0] += 1
            product[1] = max(product[1], time_us)
        elif event_type == "cart":
            self.add_to_cart_count += 1
            self.cart_value += price
            self.distinct_carted += product[2] == 0
            product[2] += 1
        elif event_type == "remove_from_cart":
            self.remove_from_cart_count += 1
            self.cart_value -= price
            product[3] += 1
        else:
            self.purchase_count += 1
        self.first_us = min(self.first_us, time_us)
        if time_us >= self.last_us:  # the latest event decides the "latest" features
            self.last_us = time_us
            self.last_event_type = event_type
            self.user_id = user_id  # a session can change hands (say, at login): latest wins
            self.device_type = device_type or self.device_type
            self.channel = channel or self.channel
        self.last_snapshot_us = max(time_us, self.last_snapshot_us + 1)
        return self.last_snapshot_us

    def expired(self, time_us: int, timeout_us: int) -> bool:
        """Whether an event at `time_us` comes after the session went inactive."""
        return self.event_count > 0 and time_us - self.last_us > timeout_us

    # -- features -------------------------------------------------------------------------

    def session_values(self) -> tuple:
        latest = datetime.fromtimestamp(self.last_us / 1e6, UTC)
        return (
            self.event_count, self.view_count, self.add_to_cart_count,
            self.remove_from_cart_count, self.purchase_count,
            self.distinct_viewed, self.distinct_carted,
            (self.last_us - self.first_us) / 1e6,
            self.cart_value,
            self.view_price_sum / self.view_count if self.view_count else None,
            latest.hour,
            latest.weekday() >= 5,
            self.last_event_type, self.device_type, self.channel,
        )

    def product_values(self, product_id: int) -> tuple:
        views, last_view_us, adds, removals = self.products.get(product_id, (0, 0, 0, 0))
        return (views, last_view_us or None, adds > removals)

    # -- state ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return orjson.dumps([
            _STATE_VERSION, self.user_id, self.event_count, self.view_count,
            self.add_to_cart_count, self.remove_from_cart_count, self.purchase_count,
            self.first_us, self.last_us, self.last_snapshot_us, self.view_price_sum,
            self.cart_value, self.last_event_type, self.device_type, self.channel,
            [[pid, *values] for pid, values in self.products.items()], list(self.seen),
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionAccumulator:
        (version, user_id, *counts, first_us, last_us, last_snapshot_us, view_price_sum,
         cart_value, last_event_type, device_type, channel, products, seen) = orjson.loads(data)
        if version != _STATE_VERSION:
            raise ValueError(f"session state version {version} is not {_STATE_VERSION}")
        acc = cls(user_id)
        (acc.event_count, acc.view_count, acc.add_to_cart_count, acc.remove_from_cart_count,
         acc.purchase_count) = counts
        acc.first_us, acc.last_us, acc.last_snapshot_us = first_us, last_us, last_snapshot_us
        acc.view_price_sum, acc.cart_value = view_price_sum, cart_value
        acc.last_event_type, acc.device_type, acc.channel = last_event_type, device_type, channel
        acc.products = {p[0]: p[1:] for p in products}
        acc.distinct_viewed = sum(1 for p in acc.products.values() if p[0])
        acc.distinct_carted = sum(1 for p in acc.products.values() if p[2])
        acc.seen = set(seen)
        return acc


def fold_session(acc: SessionAccumulator | None, events: Iterable[EventTuple],
                 timeout_us: int) -> Iterator[tuple[SessionAccumulator, int, int]]:
    """Fold events (already in processing order) into a session. Yields, for each event that
    counts, (accumulator after it, its position in `events`, its snapshot time in us); the
    accumulator is updated in place, so read it before the next step."""
    for position, event in enumerate(events):
        if acc is None or acc.expired(event[0], timeout_us):
            acc = SessionAccumulator(event[4])
        snapshot_us = acc.add(event)
        if snapshot_us is not None:
            yield acc, position, snapshot_us


def event_tuples(events: pd.DataFrame) -> Iterator[EventTuple]:
    """Valid events (the contract's typed frame) as fold inputs, in frame order."""
    times = events["event_time"].astype("datetime64[us, UTC]").astype(np.int64)
    return zip(times.tolist(), *(events[name].tolist() for name in EVENT_FIELDS[1:]),
               strict=True)


def processing_order(events: pd.DataFrame, tiebreak: Iterable[str] = ()) -> pd.DataFrame:
    """Events sorted by session, then event time, then the given arrival-order columns."""
    return events.sort_values(["user_session", "event_time", *tiebreak], kind="stable")


def snapshots(events: pd.DataFrame, timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
              ) -> pd.DataFrame:
    """Every event's feature snapshot, as the streaming job emits them (offline form).

    `events`: valid events in the contract's typed frame, in arrival order; repeated events
    are counted once. One row per counted event: the session id, user id, product id,
    event id and type, event time, snapshot time and every session and session-product
    feature.
    """
    ordered = processing_order(events)
    timeout_us = int(timeout_s * 1e6)
    rows: list[tuple] = []
    sessions = ordered["user_session"].tolist()
    start = 0
    tuples = list(event_tuples(ordered))
    while start < len(tuples):
        end = start
        while end < len(tuples) and sessions[end] == sessions[start]:
            end += 1
        session = tuples[start:end]
        for acc, position, snapshot_us in fold_session(None, session, timeout_us):
            event = session[position]
            rows.append((sessions[start], acc.user_id, event[2], event[7], event[1], event[0],
                         snapshot_us, *acc.session_values(), *acc.product_values(event[2])))
        start = end
    return snapshot_frame(rows)


SNAPSHOT_COLUMNS = (SESSION_ID, USER_ID, PRODUCT_ID, "event_id", "event_type", "event_time",
                    EVENT_TIMESTAMP,
                    *SESSION_FEATURE_NAMES, *SESSION_PRODUCT_FEATURE_NAMES)


def snapshot_frame(rows: list[tuple]) -> pd.DataFrame:
    """Snapshot rows (in SNAPSHOT_COLUMNS order, times in us) as a typed frame."""
    frame = pd.DataFrame.from_records(rows, columns=list(SNAPSHOT_COLUMNS))
    for column in ("event_time", EVENT_TIMESTAMP, "last_product_view_at"):
        frame[column] = utc_times(frame[column]).astype("datetime64[ns, UTC]")
    return frame


def utc_times(micros: Iterable[int | float | None]) -> pd.Series:
    """Microseconds since the epoch (None or NaN where unknown) as UTC timestamps (NaT there),
    in microseconds, by Arrow's cast. Not pandas' to_datetime(unit="us"): its hashed cache and
    float round trip failed under load here with impossible errors (an index of -96 on
    nullable integers, an overflow rounding zeros; three times on 2026-12-06, the streaming
    job's task among them), never on a quiet machine; Arrow's cast is a copy with a mask."""
    values = pa.array(micros if isinstance(micros, pd.Series) else list(micros),
                      type=pa.int64(), from_pandas=True)
    return values.cast(pa.timestamp("us", tz="UTC")).to_pandas()


def request_time_features(last_purchase_at: Any, last_product_view_at: Any, now: Any
                          ) -> dict[str, Any]:
    """The request-time features from stored times and the moments of use, all as seconds
    since the epoch (floats or float arrays; NaN where unknown, which stays NaN). Plain
    arithmetic, so training's columns and the scorer's single values take the same path."""
    return {
        DAYS_SINCE_LAST_PURCHASE.name: (now - last_purchase_at) / 86_400,
        SECONDS_SINCE_LAST_PRODUCT_VIEW.name: now - last_product_view_at,
    }
