"""KPL aggregated records: the job's own decoder against AWS Labs' aggregator (aws_kinesis_agg),
broken aggregates as quarantine reasons, and the positions the source gives their events."""

from __future__ import annotations

import base64
import hashlib
import random

import orjson
import pyarrow as pa
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from propensity import events, kpl
from propensity.events import Reason
from propensity.streaming.kinesis_shards import to_batch
from propensity.streaming.parse import QUARANTINE_RECORD, parse_batches, unpack
from tests.test_events import _json


def aggregated(datas: list[bytes], keys: list[str] | None = None) -> bytes:
    """One aggregated record of these user records, made by aws_kinesis_agg."""
    aggregator = RecordAggregator()
    for i, data in enumerate(datas):
        assert aggregator.add_user_record((keys or ["k"])[i % len(keys or ["k"])], data) is None
    return aggregator.clear_and_get().get_contents()[2]


def _framed(message: bytes) -> bytes:
    """Magic, message and a digest that matches it: what a producer with a bug would send."""
    return kpl.MAGIC + message + hashlib.md5(message).digest()


def _reason(data: bytes) -> tuple[Reason, str]:
    with pytest.raises(kpl.AggregateError) as refused:
        kpl.events_of(data)
    return refused.value.reason, refused.value.detail


def test_many_user_records_round_trip_in_order() -> None:
    rng = random.Random(7)
    datas = [rng.randbytes(rng.randrange(0, 300)) for _ in range(2000)]
    keys = [f"session-{i}" for i in range(37)]  # a partition key table of 37, indexes > 127
    assert kpl.user_records(aggregated(datas, keys)) == datas


def test_empty_user_records_and_an_empty_aggregate() -> None:
    assert kpl.user_records(aggregated([b"", b"x", b""])) == [b"", b"x", b""]
    assert kpl.events_of(aggregated([b"", b"\n"])) == []  # no events: nothing is lost either
    assert kpl.user_records(_framed(b"")) == []


def test_a_large_user_record_and_a_record_near_the_kinesis_limit() -> None:
    big = random.Random(1).randbytes(900_000)  # a length varint of 3 bytes
    assert kpl.user_records(aggregated([b"a", big, b"b"])) == [b"a", big, b"b"]
    near_limit = [bytes([i % 256]) * 4000 for i in range(250)]
    data = aggregated(near_limit)
    assert len(data) > 1_000_000 and kpl.user_records(data) == near_limit


def test_events_are_numbered_across_user_records_and_their_lines() -> None:
    a, b, c = _json(user_session="a"), _json(user_session="b"), _json(user_session="c")
    data = aggregated([a, b + b"\n" + c + b"\n", b"", a])
    assert kpl.events_of(data) == [a, b, c, a]
    batch = to_batch("shard-0", [("49", 1.5, data), ("50", 2.0, b + b"\n" + c)])
    assert batch.column("sequence_number").to_pylist() == ["49"] * 4 + ["50"] * 2
    assert batch.column("sub_sequence").to_pylist() == [0, 1, 2, 3, 0, 1]
    assert batch.column("payload").to_pylist() == [a, b, c, a, b, c]
    assert batch.column(events.REASON).null_count == batch.num_rows


def test_plain_records_pass_as_before_byte_for_byte() -> None:
    plain = [_json(), _json(user_session="x") + b"\n\n" + _json() + b"\n", b"not json",
             b"\n", b"{" + kpl.MAGIC + b"}", b""]
    for data in plain:
        assert not kpl.is_aggregated(data)
        assert kpl.events_of(data) == events.split_record(data)
    batch = to_batch("shard-0", [(str(i), 0.0, data) for i, data in enumerate(plain)])
    expected = [(str(i), sub, line) for i, data in enumerate(plain)
                for sub, line in enumerate(events.split_record(data))]
    assert list(zip(batch.column("sequence_number").to_pylist(),
                    batch.column("sub_sequence").to_pylist(),
                    batch.column("payload").to_pylist(), strict=True)) == expected


def test_a_digest_that_does_not_match_is_refused() -> None:
    data = aggregated([_json(), _json(user_session="b")])
    flipped = bytearray(data)
    flipped[10] ^= 0x01  # a bit flipped inside the protobuf
    assert _reason(bytes(flipped)) == (Reason.AGGREGATE_DIGEST_MISMATCH,
                                       "the MD5 digest does not match the protobuf message")
    assert _reason(data[:-1])[0] is Reason.AGGREGATE_DIGEST_MISMATCH  # cut short on the way


def test_a_truncated_protobuf_is_malformed() -> None:
    message = aggregated([_json(), _json(user_session="b")])[len(kpl.MAGIC):-kpl.DIGEST_BYTES]
    reason, detail = _reason(_framed(message[:-5]))
    assert reason is Reason.AGGREGATE_MALFORMED
    assert detail.startswith("not an AggregatedRecord: field 3 of ") and "overruns" in detail
    # Cut anywhere, a message (digest made to match) is malformed or decodes to a prefix of
    # the user records: never another error, never other data.
    whole = kpl.user_records(_framed(message))
    for end in range(len(message)):
        try:
            got = kpl.user_records(_framed(message[:end]))
        except kpl.AggregateError as exc:
            assert exc.reason is Reason.AGGREGATE_MALFORMED
        else:
            assert got == whole[:len(got)]


@pytest.mark.parametrize(("message", "detail"), [
    (b"\x0a\x01k\x1a\x04\x08\x01\x1a\x00", "record 0 names partition key 1 of 1"),  # no such key
    (b"\x1a\x02\x1a\x00", "record 0 names partition key 0 of 0"),  # an empty key table
    (b"\x0a\x01k\x18\x05", "field 3 is not length-delimited"),
    (b"\x0a\x01k\x1a\x02\x0a\x00", "record 0: partition_key_index is not a varint"),
    (b"\x0a\x01k\x1a\x00\x1a\x02\x1a\x05", "record 1: field 3 of 5 bytes at byte 2 overruns "
                                             "the 2-byte message"),
    (b"\x0a\x01k\x0b", "wire type 3 (field 1) at byte 4"),
    (b"\x0a\x01k\x08" + b"\xff" * 10, "a varint longer than 10 bytes at byte 4"),
    (b"\x0a\x01k\x08\xff", "the message ends inside a varint at byte 4"),
    (b"\x00\x00", "field number 0 at byte 1"),
])
def test_malformed_aggregates_say_why(message: bytes, detail: str) -> None:
    assert _reason(_framed(message)) == (Reason.AGGREGATE_MALFORMED,
                                         f"not an AggregatedRecord: {detail}")


def test_unknown_fields_and_tags_are_skipped() -> None:
    # A user record with a tag and an explicit hash key, unknown fields of every wire type.
    record = b"\x08\x00\x10\x00\x1a\x02hi\x22\x05\x0a\x01t\x12\x00" + b"\x29" + b"\x00" * 8
    message = b"\x0a\x01k\x12\x011\x1a" + bytes([len(record)]) + record + b"\x25" + b"\x00" * 4
    assert kpl.user_records(_framed(message)) == [b"hi"]


@pytest.mark.parametrize("data", [kpl.MAGIC, kpl.MAGIC + b"\x00" * 15])
def test_the_magic_alone_or_too_short_for_a_digest_is_malformed(data: bytes) -> None:
    assert _reason(data) == (Reason.AGGREGATE_MALFORMED,
                             f"{len(data)} bytes: too short for the magic and the MD5 digest")


def test_a_broken_aggregate_is_quarantined_whole_and_costs_nothing_else() -> None:
    good = aggregated([_json(user_session="a"), _json(user_session="b")])
    broken = good[:-1] + bytes([good[-1] ^ 0xFF])
    records = [("1", 1.0, good), ("2", 2.0, broken), ("3", 3.0, _json(user_session="c"))]
    batch = to_batch("shard-7", records)
    parsed = pa.Table.from_batches(list(parse_batches(iter([batch]), buckets=64)))
    counted = parsed.filter(pa.compute.not_equal(parsed.column("bucket"), -1))
    assert sorted(counted.column("user_session").to_pylist()) == ["a", "b", "c"]
    invalid = parsed.filter(pa.compute.equal(parsed.column("bucket"), -1))
    quarantined = unpack(invalid.column("record").to_pylist(), QUARANTINE_RECORD)
    assert quarantined[events.REASON] == ["aggregate_digest_mismatch"]
    assert quarantined[events.DETAIL] == ["the MD5 digest does not match the protobuf message "
                                          "(payload: the whole Kinesis record, base64)"]
    assert base64.b64decode(quarantined[events.PAYLOAD][0]) == broken
    assert (quarantined["shard_id"], quarantined["sequence_number"],
            quarantined["sub_sequence"]) == (["shard-7"], ["2"], [0])


def test_positions_depend_on_the_record_alone() -> None:
    """Batches cover whole records (offsets are record sequence numbers), so a batch replayed
    after a restart gives its events the same positions, however the records are grouped."""
    rng = random.Random(3)
    records = [(str(100 + i), float(i), aggregated(
        [_json(user_session=f"s{i}-{j}", price=str(rng.random())) for j in
         range(rng.randrange(1, 30))])) for i in range(20)]

    def positions(*batches: list) -> list[tuple]:
        rows = [row for part in batches for row in to_batch("shard-0", part).to_pylist()]
        return [(r["sequence_number"], r["sub_sequence"], orjson.loads(r["payload"])["price"])
                for r in rows]

    whole = positions(records)
    assert positions(records[:7], records[7:]) == whole == positions(records)
    assert len(set((seq, sub) for seq, sub, _ in whole)) == len(whole)  # unique positions
