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

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

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


# ---------------------------------------------------------------------------------------------
# Raw frames


def raw_frame(columns: dict[str, Sequence], passthrough: dict[str, Sequence] | None = None
              ) -> pd.DataFrame:
    """A raw frame from text columns; missing fields become all-None columns."""
    n = len(next(iter(columns.values()))) if columns else 0
    data = {name: columns.get(name, [None] * n) for name in _RAW_COLUMNS}
    frame = pd.DataFrame(data, dtype=object)
    frame[SIZE] = pd.to_numeric(frame[SIZE], errors="coerce").fillna(0).astype(np.int64)
    for name, values in (passthrough or {}).items():
        frame[name] = values
    return frame


def _json_scalar(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):  # bool is an int subclass: reject before the int branch
        raise TypeError
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError


def frame_from_json(payloads: Sequence[bytes | str],
                    passthrough: dict[str, Sequence] | None = None) -> pd.DataFrame:
    """A raw frame from JSON texts, one event each."""
    columns: dict[str, list] = {name: [] for name in _RAW_COLUMNS}
    for payload in payloads:
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        values, problem = _parse_json_event(payload)
        for name in FIELD_NAMES:
            columns[name].append(values.get(name))
        columns[PAYLOAD].append(text)
        columns[SIZE].append(len(payload) if isinstance(payload, bytes) else len(text.encode()))
        columns[PROBLEM].append(problem)
    return raw_frame(columns, passthrough)


def _parse_json_event(payload: bytes | str) -> tuple[dict[str, str | None], str | None]:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}, "not JSON"
    if not isinstance(obj, dict):
        return {}, "not a JSON object"
    values: dict[str, str | None] = {}
    for name in FIELD_NAMES:
        try:
            values[name] = _json_scalar(obj.get(name))
        except TypeError:
            return {}, f"{name} is not a string or number"
    return values, None


def split_record(data: bytes) -> list[bytes]:
    """The events of one Kinesis record: one JSON object per non-blank line."""
    return [line for line in data.split(b"\n") if line.strip()]


class _WholeUtf8Lines(io.RawIOBase):
    """A file's decompressed bytes as whole lines of valid UTF-8, for the CSV reader: a line
    that is not UTF-8 goes to `rejected` (its text with escapes) instead of failing the whole
    file; a stream that breaks off (a truncated .gz) ends at its last whole line, the partial
    one kept in `partial` and the error in `broken`."""

    def __init__(self, source: BinaryIO, rejected: list[str], block: int) -> None:
        super().__init__()
        self._source, self._rejected, self._block = source, rejected, block
        self._out, self._rest, self._ended = memoryview(b""), b"", False
        self.broken: str | None = None
        self.partial: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._out and not self._ended:
            self._out = memoryview(self._valid(self._next_lines()))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _next_lines(self) -> bytes:
        pieces, size = [], 0
        try:  # read1, one read at a time: a break loses nothing read before it
            while size < self._block and (piece := self._source.read1(self._block - size)):
                pieces.append(piece)
                size += len(piece)
        except (OSError, EOFError, zlib.error) as exc:
            self.broken = str(exc)
        data = self._rest + b"".join(pieces)
        if size and self.broken is None:
            cut = data.rfind(b"\n") + 1
            lines, self._rest = data[:cut], data[cut:]
            return lines
        self._ended = True  # the end; after a break, what follows the last newline is partial
        cut = data.rfind(b"\n") + 1 if self.broken is not None else len(data)
        if data[cut:]:
            self.partial = _line_text(data[cut:])
        return data[:cut]

    def _valid(self, lines: bytes) -> bytes:
        try:
            lines.decode()
            return lines
        except UnicodeDecodeError:
            kept = []
            for line in lines.splitlines(keepends=True):
                try:
                    line.decode()
                    kept.append(line)
                except UnicodeDecodeError:
                    self._rejected.append(_line_text(line))
            return b"".join(kept)


def _line_text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode(errors="backslashreplace")


def read_csv(path: str | Path, chunk_bytes: int = 4 << 20) -> Iterator[pd.DataFrame]:
    """Raw frames from a REES46 CSV file (plain or .gz), in file order, chunk by chunk.

    Rows of the wrong width or not in UTF-8 come out as malformed rows (with a later chunk),
    not as errors. A file that breaks off (a truncated .gz) gives its rows up to there, its
    partial last line as malformed, and then a ContractError saying so.
    """
    path = Path(path)
    # Python's gzip, not Arrow's: on a truncated file it hands over what it could decompress.
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as source:
        yield from _csv_frames(path, source, chunk_bytes)


def _csv_frames(path: Path, source: BinaryIO, chunk_bytes: int) -> Iterator[pd.DataFrame]:
    wrong_width: list[str] = []
    not_utf8: list[str] = []
    partial: list[str] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        wrong_width.append(row.text)
        return "skip"

    def with_malformed(frame: pd.DataFrame | None) -> pd.DataFrame:
        frames = [] if frame is None else [frame]
        for lines, problem in ((wrong_width, "row width differs from the header"),
                               (not_utf8, "not UTF-8 text"),
                               (partial, "the file breaks off in this line")):
            if lines:
                frames.append(_malformed_lines(lines, problem))
                lines.clear()
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    lines = _WholeUtf8Lines(source, not_utf8, chunk_bytes)
    try:
        reader = pacsv.open_csv(
            pa.PythonFile(lines, mode="r"),
            read_options=pacsv.ReadOptions(block_size=chunk_bytes),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(FIELD_NAMES, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        why = ("its first lines are not UTF-8 text" if not_utf8 and "Empty" in str(exc)
               else lines.broken or str(exc))
        raise ContractError(f"{path}: not a readable CSV file: {why}") from exc
    header = reader.schema.names
    missing = [c for c in REES46_COLUMNS if c not in header]
    if missing:
        raise ContractError(f"{path}: header lacks the REES46 columns {missing}; got {header}")
    known = [c for c in header if c in _FIELD]
    rows = 0
    try:
        for batch in reader:
            rows += batch.num_rows
            yield with_malformed(_csv_batch_frame(batch, known))
    except pa.ArrowInvalid as exc:
        raise ContractError(f"{path}: unreadable after {rows:,} rows: {exc}") from exc
    if lines.partial is not None:
        partial.append(lines.partial)
    if wrong_width or not_utf8 or partial:
        yield with_malformed(None)
    if lines.broken is not None:
        raise ContractError(f"{path}: the file breaks off after {rows:,} rows ({lines.broken});"
                            " the rows before were read, the partial last line is malformed")


def _csv_batch_frame(batch: pa.RecordBatch, known: list[str]) -> pd.DataFrame:
    columns: dict[str, Sequence] = {name: batch.column(name).to_pandas() for name in known}
    # The size of the line is its fields' UTF-8 bytes plus the separators; the line itself is
    # rebuilt only for rows that turn out invalid (see _payloads).
    size = np.full(batch.num_rows, len(known) - 1, dtype=np.int64)
    for name in known:
        size += pc.binary_length(batch.column(name)).to_numpy(zero_copy_only=False)
    columns[SIZE] = size
    frame = raw_frame(columns)
    frame.attrs["csv_columns"] = known
    return frame


def _malformed_lines(lines: list[str], problem: str) -> pd.DataFrame:
    return raw_frame({
        PAYLOAD: list(lines),
        SIZE: [len(line.encode()) for line in lines],
        PROBLEM: [problem] * len(lines),
    })


def _csv_line(values: Iterable[str | None]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Validation

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


# ---------------------------------------------------------------------------------------------
# Identity and serialisation


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
