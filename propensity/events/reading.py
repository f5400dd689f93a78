"""Raw frames: REES46 CSV files and JSON payloads (Kinesis records) turned into one text column
per field, with each event's raw payload and size, before validation."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from propensity.events.schema import (
    _FIELD,
    _RAW_COLUMNS,
    FIELD_NAMES,
    PAYLOAD,
    PROBLEM,
    REES46_COLUMNS,
    SIZE,
    ContractError,
)


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


