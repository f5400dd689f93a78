"""KPL aggregated records: the Kinesis Producer Library's format, decoded without its library.

Producers that use the KPL (or agents that aggregate like it) pack many *user records* into one
Kinesis record:

    4 magic bytes F3 89 9A C2 | protobuf message AggregatedRecord | MD5 of the message (16 bytes)

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;   // into partition_key_table
      optional uint64 explicit_hash_key_index = 2;   // into explicit_hash_key_table
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;   // Tag {key = 1; value = 2}, unused here
    }

`events_of` gives a Kinesis record's events, for the streaming source and `kinesis.read_events`:
for an aggregated record, the newline-delimited events (events.split_record) of each user record
in turn; any other record is split as it is. The protobuf is read by the small wire decoder
below (varints and length-delimited fields): the streaming job needs no generated protobuf code
and no package beyond those it has (AWS Labs' aggregator is the local extra's, for replay).

A record that starts with the magic but does not decode raises `AggregateError` with the
contract's reason: `aggregate_digest_mismatch` (the MD5 does not match the message: corrupted
on the way) or `aggregate_malformed` (too short to hold the digest, or not a well-formed
AggregatedRecord). The KCL and AWS Labs' deaggregator would hand such a record on as plain
data instead; here no event can start with the magic (0xF3 0x89 0x9A 0xC2 is not UTF-8), so it
can only be a broken aggregate, and the quarantine keeps it with the reason.
"""

from __future__ import annotations

import hashlib

from propensity import events

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_BYTES = 16

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/); 3 and 4 (groups) are
# not used by this format and count as malformed.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10  # 64 bits, 7 per byte

# Field numbers.
_PARTITION_KEY_TABLE, _EXPLICIT_HASH_KEY_TABLE, _RECORDS = 1, 2, 3
_PARTITION_KEY_INDEX, _EXPLICIT_HASH_KEY_INDEX, _DATA = 1, 2, 3


class AggregateError(ValueError):
    """A record that starts with the magic but is not a readable aggregated record."""

    def __init__(self, reason: events.Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def is_aggregated(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def events_of(data: bytes) -> list[bytes]:
    """The events of one Kinesis record, in order: those of each user record of an aggregated
    record, else those of the record itself. Raises AggregateError."""
    if not is_aggregated(data):
        return events.split_record(data)
    return [event for user_record in user_records(data)
            for event in events.split_record(user_record)]


def user_records(data: bytes) -> list[bytes]:
    """The data of each user record of an aggregated record, in order. Raises AggregateError."""
    if len(data) < len(MAGIC) + DIGEST_BYTES:
        raise AggregateError(events.Reason.AGGREGATE_MALFORMED,
                             f"{len(data)} bytes: too short for the magic and the MD5 digest")
    message, digest = data[len(MAGIC):-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.md5(message).digest() != digest:
        raise AggregateError(events.Reason.AGGREGATE_DIGEST_MISMATCH,
                             "the MD5 digest does not match the protobuf message")
    try:
        return _aggregated_record(message)
    except _Malformed as exc:
        raise AggregateError(events.Reason.AGGREGATE_MALFORMED,
                             f"not an AggregatedRecord: {exc}") from None


class _Malformed(ValueError):
    pass


def _aggregated_record(message: bytes) -> list[bytes]:
    partition_keys = 0
    records: list[tuple[int, bytes]] = []
    for number, value in _fields(message):
        if number == _PARTITION_KEY_TABLE:
            partition_keys += 1
            _expect_bytes(number, value)
        elif number == _EXPLICIT_HASH_KEY_TABLE:
            _expect_bytes(number, value)
        elif number == _RECORDS:
            record = _expect_bytes(number, value)
            try:
                records.append(_record(record))
            except _Malformed as exc:  # its byte offsets are within the record
                raise _Malformed(f"record {len(records)}: {exc}") from None
    for i, (key_index, _) in enumerate(records):
        # The KCL refuses such a record too: a user record without a partition key.
        if key_index >= partition_keys:
            raise _Malformed(f"record {i} names partition key {key_index} of "
                             f"{partition_keys}")
    return [data for _, data in records]


def _record(message: bytes) -> tuple[int, bytes]:
    """(partition key index, data) of one Record. Absent fields take protobuf's defaults (0,
    empty), as a producer with proto3 semantics leaves them out."""
    key_index, data = 0, b""
    for number, value in _fields(message):
        if number == _PARTITION_KEY_INDEX:
            if not isinstance(value, int):
                raise _Malformed("partition_key_index is not a varint")
            key_index = value
        elif number == _EXPLICIT_HASH_KEY_INDEX and not isinstance(value, int):
            raise _Malformed("explicit_hash_key_index is not a varint")
        elif number == _DATA:
            data = _expect_bytes(number, value)
    return key_index, data


def _expect_bytes(number: int, value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise _Malformed(f"field {number} is not length-delimited")
    return value


def _fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of every field of a message, in order: varints as int,
    length-delimited fields as bytes; fixed-width fields (no field of this format) are skipped,
    as protobuf skips unknown fields."""
    fields: list[tuple[int, int | bytes]] = []
    at, end = 0, len(message)
    while at < end:
        key, at = _varint(message, at)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {at}")
        if wire_type == _VARINT:
            value, at = _varint(message, at)
            fields.append((number, value))
        elif wire_type == _LENGTH_DELIMITED:
            length, at = _varint(message, at)
            if at + length > end:
                raise _Malformed(f"field {number} of {length} bytes at byte {at} overruns the "
                                 f"{end}-byte message")
            fields.append((number, message[at:at + length]))
            at += length
        elif wire_type in (_FIXED64, _FIXED32):
            at += 8 if wire_type == _FIXED64 else 4
            if at > end:
                raise _Malformed(f"field {number} overruns the {end}-byte message")
        else:
            raise _Malformed(f"wire type {wire_type} (field {number}) at byte {at}")
    return fields


def _varint(message: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and the position after it."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if at + i >= len(message):
            raise _Malformed(f"the message ends inside a varint at byte {at}")
        byte = message[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, at + i + 1
    raise _Malformed(f"a varint longer than {_MAX_VARINT_BYTES} bytes at byte {at}")
