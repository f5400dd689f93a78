"""The prediction log's rows of some days with their outcome: did the session purchase after
the moment it was scored (`as_of`)? The label is training's (training/dataset.py: a point is
positive when its session goes on to purchase), read from the event lake's purchases of the days
the rows were scored for (`as_of`: the day answered in production, the events' days in a
replay) and the day after (a session may cross midnight).

The log is read batch by batch (`labelled_batches`); the purchases are held once, as the last
purchase time of each purchasing session (a small table next to the log).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from propensity.lake import day_dataset
from propensity.predictions import TIMESTAMP
from propensity.settings import Settings

LABEL = "purchased_after"
_LAST_PURCHASE = "last_purchase_at"
BATCH_ROWS = 200_000


def last_purchases(settings: Settings, first: date, last: date) -> pa.Table:
    """session_id -> the time of its last purchase, from the lake's events of the days from
    `first` to `last` and the day after."""
    lake = day_dataset(settings, settings.events_uri,
                       [first + timedelta(n) for n in range((last - first).days + 2)])
    empty = pa.table({"session_id": pa.array([], pa.string()),
                      _LAST_PURCHASE: pa.array([], TIMESTAMP)})
    if lake is None:
        return empty
    purchases = lake.to_table(columns=["user_session", "event_time"],
                              filter=ds.field("event_type") == "purchase")
    if not purchases.num_rows:
        return empty
    last = purchases.group_by("user_session").aggregate([("event_time", "max")])
    return pa.table({"session_id": last["user_session"],
                     _LAST_PURCHASE: last["event_time_max"].cast(TIMESTAMP)})


def labelled_batches(settings: Settings, days: Sequence[date], columns: Sequence[str]
                     ) -> Iterator[pa.Table]:
    """The log's rows of `days` (the given columns) in batches, each with LABEL: its session
    purchased after its `as_of`. Nothing when the log has none of those days."""
    log = day_dataset(settings, settings.predictions_uri, days)
    if log is None:
        return
    purchases = last_purchases(settings, *scored_days(log))
    wanted = list(dict.fromkeys([*columns, "session_id", "as_of"]))
    for batch in log.to_batches(columns=wanted, batch_size=BATCH_ROWS):
        if batch.num_rows:
            yield label(pa.Table.from_batches([batch]), purchases)


def scored_days(log: ds.Dataset) -> tuple[date, date]:
    """The first and last day the log's rows were scored for (`as_of`): the day answered in
    production, the events' own days in a replay or a backfill."""
    low = high = None
    for batch in log.to_batches(columns=["as_of"], batch_size=BATCH_ROWS):
        if batch.num_rows:
            bounds = pc.min_max(batch.column(0))
            low = min(filter(None, (low, bounds["min"].as_py())))
            high = max(filter(None, (high, bounds["max"].as_py())))
    if low is None:
        raise ValueError("the prediction log's objects hold no rows")
    return low.date(), high.date()


def label(rows: pa.Table, purchases: pa.Table) -> pa.Table:
    """`rows` (session_id, as_of, ...) with LABEL from the purchases table, in their order (a
    lookup, not a join: Arrow's joins do not carry list columns such as `features`)."""
    found = pc.index_in(rows["session_id"], value_set=purchases["session_id"])
    last = pc.take(purchases[_LAST_PURCHASE], found)
    after = pc.fill_null(pc.greater(last, rows["as_of"].cast(TIMESTAMP)), False)
    return rows.append_column(LABEL, after)
