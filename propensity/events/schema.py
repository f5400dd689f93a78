"""The event contract's schema: the fields, their Arrow schemas (event, lake, quarantine),
the reasons an event is refused, and the validated result."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa

EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")
MAX_EVENT_BYTES = 4096
MAX_TEXT_ID_CHARS = 128
_INT64_MAX = np.iinfo(np.int64).max


class Kind(StrEnum):
    TIMESTAMP = "timestamp"
    EVENT_TYPE = "event_type"
    INT_ID = "int_id"
    TEXT_ID = "text_id"
    PRICE = "price"
    TEXT = "text"


@dataclass(frozen=True)
class EventField:
    name: str
    kind: Kind
    required: bool
    arrow_type: pa.DataType


FIELDS: tuple[EventField, ...] = (
    EventField("event_time", Kind.TIMESTAMP, True, pa.timestamp("us", tz="UTC")),
    EventField("event_type", Kind.EVENT_TYPE, True, pa.string()),
    EventField("product_id", Kind.INT_ID, True, pa.int64()),
    EventField("category_id", Kind.INT_ID, False, pa.int64()),
    EventField("category_code", Kind.TEXT, False, pa.string()),
    EventField("brand", Kind.TEXT, False, pa.string()),
    EventField("price", Kind.PRICE, True, pa.float64()),
    EventField("user_id", Kind.INT_ID, True, pa.int64()),
    EventField("user_session", Kind.TEXT_ID, True, pa.string()),
    EventField("event_id", Kind.TEXT_ID, False, pa.string()),
    EventField("device_type", Kind.TEXT, False, pa.string()),
    EventField("channel", Kind.TEXT, False, pa.string()),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
REES46_COLUMNS: tuple[str, ...] = FIELD_NAMES[:9]
_FIELD = {f.name: f for f in FIELDS}

# Typed valid events; event_id is always filled (given or computed).
EVENT_SCHEMA = pa.schema(
    [pa.field(f.name, f.arrow_type, nullable=not (f.required or f.name == "event_id"))
     for f in FIELDS]
)

# Columns of a raw frame besides the fields, and of the invalid frame.
# The event as received: the CSV line or the JSON text (a whole unreadable aggregated record:
# its bytes in base64, as its detail says).
PAYLOAD = "payload"
SIZE = "size"  # bytes of the payload
PROBLEM = "problem"  # a reason found while parsing (malformed), else None
REASON = "reason"
DETAIL = "detail"
_RAW_COLUMNS = (*FIELD_NAMES, PAYLOAD, SIZE, PROBLEM)

# How events are stored. The event lake: valid, de-duplicated events and when they arrived.
ARRIVAL_TIME = "arrival_time"
LAKE_SCHEMA = EVENT_SCHEMA.append(pa.field(ARRIVAL_TIME, pa.timestamp("us", tz="UTC")))
# The quarantine: what was received, why it was refused, and where it came from (the Kinesis
# position for the stream, nulls for an imported file).
QUARANTINE_SCHEMA = pa.schema([
    (PAYLOAD, pa.string()), (REASON, pa.string()), (DETAIL, pa.string()),
    ("shard_id", pa.string()), ("sequence_number", pa.string()), ("sub_sequence", pa.int32()),
    (ARRIVAL_TIME, pa.timestamp("us", tz="UTC")),
])


class Reason(StrEnum):
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_EVENT_TYPE = "bad_event_type"
    BAD_ID = "bad_id"
    BAD_PRICE = "bad_price"
    NEGATIVE_PRICE = "negative_price"
    AGGREGATE_DIGEST_MISMATCH = "aggregate_digest_mismatch"
    AGGREGATE_MALFORMED = "aggregate_malformed"


class ContractError(ValueError):
    """A whole input cannot be read as events (for example a CSV without the REES46 columns)."""


@dataclass
class Validated:
    valid: pd.DataFrame  # EVENT_SCHEMA columns, then any pass-through columns
    invalid: pd.DataFrame  # payload, reason, detail, then any pass-through columns

    def reason_counts(self) -> Counter[str]:
        return Counter(self.invalid[REASON].tolist())


