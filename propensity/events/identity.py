"""Identity and serialisation: each valid event's identity (the producer's `event_id`, else a
stable hash of every field), and valid events as JSON payloads or an Arrow table."""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from propensity.events.schema import (
    EVENT_SCHEMA,
    FIELD_NAMES,
)


def event_identity(valid: pd.DataFrame) -> list[str]:
    """`event_id` where given, else a 128-bit hash of every field in canonical form."""
    micros = valid["event_time"].astype("datetime64[us, UTC]").astype(np.int64)
    columns = (
        valid["event_id"], micros, valid["event_type"], valid["product_id"],
        valid["category_id"].astype(object), valid["category_code"], valid["brand"],
        valid["price"], valid["user_id"], valid["user_session"], valid["device_type"],
        valid["channel"],
    )
    return [
        given if isinstance(given, str) else _hash_fields(rest)
        for given, *rest in zip(*columns, strict=True)
    ]


def _hash_fields(values: list) -> str:
    canonical = "\x1f".join(
        "" if v is None or v is pd.NA else repr(v) if isinstance(v, float) else str(v)
        for v in values
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def to_json(valid: pd.DataFrame) -> list[bytes]:
    """Each valid event as a compact JSON object (absent optional fields left out)."""
    times = valid["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str.replace(
        ".000000Z", "Z", regex=False)
    records = valid[list(FIELD_NAMES)].assign(event_time=times).astype(object)
    records = records.where(records.notna(), None)
    return [
        orjson.dumps({k: v for k, v in zip(FIELD_NAMES, row, strict=True) if v is not None},
                     option=orjson.OPT_SERIALIZE_NUMPY)
        for row in records.itertuples(index=False, name=None)
    ]


def to_arrow(valid: pd.DataFrame) -> pa.Table:
    """Valid events as an Arrow table of EVENT_SCHEMA (pass-through columns left out)."""
    return pa.Table.from_pandas(valid[list(FIELD_NAMES)], schema=EVENT_SCHEMA,
                                preserve_index=False)
