"""Validation: the contract's rules applied to a whole raw frame at once (propensity/events),
typed valid events and the invalid ones with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from propensity.events.identity import event_identity
from propensity.events.reading import (
    _csv_line,
    raw_frame,
    read_csv,
)
from propensity.events.schema import (
    _INT64_MAX,
    _RAW_COLUMNS,
    DETAIL,
    EVENT_TYPES,
    FIELD_NAMES,
    FIELDS,
    MAX_EVENT_BYTES,
    MAX_TEXT_ID_CHARS,
    PAYLOAD,
    PROBLEM,
    REASON,
    SIZE,
    Kind,
    Reason,
    Validated,
)

_REES46_TIME = "%Y-%m-%d %H:%M:%S UTC"
_EXPLICIT_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2}|\sUTC)$"
_DIGITS = r"^\d{1,19}$"


def validate_file(path: str | Path) -> Validated:
    """A whole REES46 file validated: every chunk's valid events and invalid rows, in order.
    (The importer validates chunk by chunk instead, to keep memory low at scale.)"""
    checked = [validate(raw) for raw in read_csv(path)] or [validate(raw_frame({}))]
    return Validated(pd.concat([c.valid for c in checked], ignore_index=True),
                     pd.concat([c.invalid for c in checked], ignore_index=True))


def validate(raw: pd.DataFrame) -> Validated:
    """Split a raw frame into typed valid events and invalid ones with reason and detail."""
    n = len(raw)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)

    def flag(mask: np.ndarray | pd.Series, code: Reason, why: object) -> None:
        hit = np.asarray(mask, dtype=bool) & pd.isna(reason)
        reason[hit] = code.value
        detail[hit] = why[hit] if isinstance(why, np.ndarray) else why

    problem = raw[PROBLEM].to_numpy(dtype=object)
    flag(pd.notna(problem), Reason.MALFORMED, problem)
    flag(raw[SIZE].to_numpy() > MAX_EVENT_BYTES, Reason.TOO_LARGE, f"over {MAX_EVENT_BYTES} bytes")

    text = {name: _clean_text(raw[name]) for name in FIELD_NAMES}
    for field in FIELDS:
        if field.required:
            flag(text[field.name].isna(), Reason.MISSING_FIELD, field.name)

    event_time = _parse_times(text["event_time"])
    flag(event_time.isna() & text["event_time"].notna(), Reason.BAD_TIMESTAMP,
         "event_time needs a timestamp with a UTC offset")

    event_type = text["event_type"]
    flag(event_type.notna() & ~event_type.isin(EVENT_TYPES), Reason.BAD_EVENT_TYPE,
         "event_type must be one of " + ", ".join(EVENT_TYPES))

    ids: dict[str, pd.Series] = {}
    for field in FIELDS:
        values = text[field.name]
        if field.kind is Kind.INT_ID:
            ids[field.name] = parsed = _parse_int_ids(values)
            flag(values.notna() & parsed.isna(), Reason.BAD_ID,
                 f"{field.name} must be an integer id")
        elif field.kind is Kind.TEXT_ID:
            flag(values.str.len() > MAX_TEXT_ID_CHARS, Reason.BAD_ID,
                 f"{field.name} is longer than {MAX_TEXT_ID_CHARS} characters")

    price = pd.to_numeric(text["price"], errors="coerce").astype(np.float64)
    flag(text["price"].notna() & ~np.isfinite(price), Reason.BAD_PRICE, "price must be a number")
    flag(price < 0, Reason.NEGATIVE_PRICE, "price must be >= 0")

    ok = pd.isna(reason)
    passthrough = [c for c in raw.columns if c not in _RAW_COLUMNS]
    valid = pd.DataFrame({
        "event_time": event_time[ok],
        "event_type": event_type[ok],
        "product_id": ids["product_id"][ok].astype(np.int64),
        "category_id": ids["category_id"][ok],
        "category_code": text["category_code"][ok],
        "brand": text["brand"][ok],
        "price": price[ok],
        "user_id": ids["user_id"][ok].astype(np.int64),
        "user_session": text["user_session"][ok],
        "event_id": text["event_id"][ok],
        "device_type": text["device_type"][ok],
        "channel": text["channel"][ok],
    })
    valid["event_id"] = event_identity(valid)
    for name in passthrough:
        valid[name] = raw[name][ok]

    bad = ~ok
    invalid = pd.DataFrame({
        PAYLOAD: _payloads(raw, bad),
        REASON: reason[bad],
        DETAIL: detail[bad],
    })
    for name in passthrough:
        invalid[name] = raw[name].to_numpy()[bad]
    return Validated(valid.reset_index(drop=True), invalid.reset_index(drop=True))


def _clean_text(values: pd.Series) -> pd.Series:
    """Strip surrounding whitespace; empty text counts as absent (None)."""
    stripped = values.astype(object).str.strip().to_numpy(dtype=object)
    stripped[pd.isna(stripped) | (stripped == "")] = None
    return pd.Series(stripped, index=values.index, dtype=object)


def _parse_times(values: pd.Series) -> pd.Series:
    times = pd.to_datetime(values, format=_REES46_TIME, utc=True, errors="coerce")
    retry = times.isna() & values.notna()
    if retry.any():
        candidates = values[retry]
        candidates = candidates[candidates.str.contains(_EXPLICIT_OFFSET, regex=True)]
        candidates = candidates.str.replace(r"\sUTC$", "+00:00", regex=True)
        if len(candidates):
            times[candidates.index] = pd.to_datetime(
                candidates, format="ISO8601", utc=True, errors="coerce")
    return times.astype("datetime64[us, UTC]")


def _parse_int_ids(values: pd.Series) -> pd.Series:
    """Integer ids as Int64, NA where absent, not all digits or beyond int64."""
    numbers = values[values.str.match(_DIGITS, na=False)].map(int)
    numbers = numbers[numbers <= _INT64_MAX]
    parsed = pd.Series(pd.NA, index=values.index, dtype="Int64")
    parsed[numbers.index] = numbers.astype(np.int64)
    return parsed


def _payloads(raw: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Raw payloads of the given rows, rebuilding CSV lines that were not kept while reading."""
    payloads = raw[PAYLOAD].to_numpy(dtype=object)[rows]
    csv_columns = raw.attrs.get("csv_columns")
    if csv_columns:
        subset = raw.loc[rows, csv_columns]
        for i, values in enumerate(subset.itertuples(index=False, name=None)):
            if payloads[i] is None:
                payloads[i] = _csv_line(values)
    return payloads


