"""The clickstream event contract: the only place the event schema exists.

An event arrives as a CSV row (REES46 files) or as a JSON object (one per line of a Kinesis
record). Both are first turned into a *raw frame*: one text column per field, `None` where a
field is absent, plus the event's raw payload and size. `validate` then applies the rules below
to the whole frame at once (vectorised, so the same code serves replay, the streaming job and the
batch import) and splits it into typed valid events and invalid ones with a reason code.

Rules, in the order they are checked (the first that fails gives the reason):
  malformed       not a CSV row of the header's width, not a JSON object, or a nested value
  too_large       raw payload larger than MAX_EVENT_BYTES
  missing_field   a required field is absent or empty (detail: the field)
  bad_timestamp   event_time is not a timestamp with an explicit UTC offset
  bad_event_type  event_type is not one of EVENT_TYPES
  bad_id          an id is not an integer in int64 range, or a text id is too long
  bad_price       price is not a finite number
  negative_price  price < 0

Before these, a Kinesis record that is a KPL aggregate (propensity/kpl.py) but cannot be read
is refused whole, its payload the record's bytes in base64:
  aggregate_digest_mismatch  its MD5 digest does not match its protobuf message
  aggregate_malformed        too short for the digest, or not a well-formed AggregatedRecord

Identity: `event_id` when the producer sent one, otherwise a stable hash of every field, so the
repeated rows of the raw data (and any redelivery) share one identity.
"""

from propensity.events.identity import (
    event_identity,
    to_arrow,
    to_json,
)
from propensity.events.reading import (
    frame_from_json,
    raw_frame,
    read_csv,
    split_record,
)
from propensity.events.schema import (
    ARRIVAL_TIME,
    DETAIL,
    EVENT_SCHEMA,
    EVENT_TYPES,
    FIELD_NAMES,
    FIELDS,
    LAKE_SCHEMA,
    MAX_EVENT_BYTES,
    MAX_TEXT_ID_CHARS,
    PAYLOAD,
    PROBLEM,
    QUARANTINE_SCHEMA,
    REASON,
    REES46_COLUMNS,
    SIZE,
    ContractError,
    EventField,
    Kind,
    Reason,
    Validated,
)
from propensity.events.validation import (
    validate,
    validate_file,
)

__all__ = [
    "ARRIVAL_TIME",
    "DETAIL",
    "EVENT_SCHEMA",
    "EVENT_TYPES",
    "FIELDS",
    "FIELD_NAMES",
    "LAKE_SCHEMA",
    "MAX_EVENT_BYTES",
    "MAX_TEXT_ID_CHARS",
    "PAYLOAD",
    "PROBLEM",
    "QUARANTINE_SCHEMA",
    "REASON",
    "REES46_COLUMNS",
    "SIZE",
    "ContractError",
    "EventField",
    "Kind",
    "Reason",
    "Validated",
    "event_identity",
    "frame_from_json",
    "raw_frame",
    "read_csv",
    "split_record",
    "to_arrow",
    "to_json",
    "validate",
    "validate_file",
]
