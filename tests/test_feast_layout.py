"""Feast's Redis layout and the one touch of its internals, pinned: golden bytes of an entity
key, a feature's hash field, a value and a timestamp as Feast's published format gives them
(feature_repo/redis_layout.py writes and reads them with no private Feast function); the
connection string's forms; the dask reader feature_repo/feast_internals.py wraps. A Feast
upgrade that changes any of them fails here. tests/test_online_writes.py checks, on a real
redis-server, that what we write is byte for byte what Feast's own writer leaves."""

from __future__ import annotations

import pyarrow as pa
import pytest
from feast import ValueType
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp

from propensity import feature_repo
from propensity import features as F
from propensity.feature_repo import definitions, feast_internals, redis_layout
from propensity.settings import Settings

PROJECT = "propensity"
# Feast's entity key, version 3: key count, (STRING tag, length, name) per join key, then
# (type tag, length, bytes) per value, little-endian; the project's name after it.
SESSION_KEY = bytes.fromhex("01000000" "02000000" "0a000000") + b"session_id" + bytes.fromhex(
    "02000000" "03000000") + b"s-1" + b"propensity"
USER_KEY = bytes.fromhex("01000000" "02000000" "07000000") + b"user_id" + bytes.fromhex(
    "04000000" "08000000" "2a00000000000000") + b"propensity"
# murmur3-32 of "session_features:event_count", unsigned, little-endian.
EVENT_COUNT_FIELD = bytes.fromhex("0b71bcd8")


def test_entity_keys_are_feasts_version_3_bytes() -> None:
    assert redis_layout.entity_key({F.SESSION_ID: ValueType.STRING}, {F.SESSION_ID: "s-1"},
                                   PROJECT) == SESSION_KEY
    assert redis_layout.entity_key({F.USER_ID: ValueType.INT64}, {F.USER_ID: 42},
                                   PROJECT) == USER_KEY
    batch = pa.record_batch({F.USER_ID: pa.array([42, 42], pa.int64())})
    assert redis_layout.entity_keys(batch, {F.USER_ID: ValueType.INT64}, PROJECT) == [
        USER_KEY, USER_KEY]
    with pytest.raises(ValueError, match="null"):
        redis_layout.entity_key({F.USER_ID: ValueType.INT64}, {F.USER_ID: None}, PROJECT)
    with pytest.raises(ValueError, match="no Redis key encoding"):
        redis_layout.entity_key({"x": ValueType.DOUBLE}, {"x": 1.0}, PROJECT)


def test_hash_fields_values_and_timestamps_are_feasts() -> None:
    assert redis_layout.feature_field(F.SESSION_VIEW, "event_count") == EVENT_COUNT_FIELD
    view = definitions.feature_view(Settings(), F.SESSION_VIEW)
    names, fields = redis_layout.view_fields(view)
    assert names[-1] == fields[-1] == f"_ts:{F.SESSION_VIEW}"
    assert fields[names.index("event_count")] == EVENT_COUNT_FIELD
    assert len(set(fields)) == len(fields) == len(view.features) + 1
    # Values: Feast's type map's ValueProto bytes; timestamps: a protobuf Timestamp.
    (seven,) = python_values_to_proto_values([7], ValueType.INT64)
    assert seven.SerializeToString() == b"\x20\x07"
    assert ValueProto.FromString(b"\x20\x07").int64_val == 7
    assert Timestamp(seconds=1_569_888_000).SerializeToString() == b"\x08\x80\xae\xca\xec\x05"


def test_the_connection_string_in_its_forms() -> None:
    plain = redis_layout.parse_connection_string("127.0.0.1:6390")
    assert (plain.host, plain.port, plain.password, plain.db, plain.ssl) == (
        "127.0.0.1", 6390, None, 0, False)
    full = redis_layout.parse_connection_string(
        "master.x.cache.amazonaws.com:6379,ssl=true,password=s3cr=t,db=2")
    assert (full.host, full.port, full.password, full.db, full.ssl) == (
        "master.x.cache.amazonaws.com", 6379, "s3cr=t", 2, True)
    with pytest.raises(ValueError, match="no host:port"):
        redis_layout.parse_connection_string("ssl=true")
    config = feature_repo.repo_config(Settings())
    assert config.entity_key_serialization_version == redis_layout.SERIALIZATION_VERSION
    assert config.project == PROJECT
    redis_layout.require_version(config)
    older = config.model_copy(update={"entity_key_serialization_version": 2})
    with pytest.raises(ValueError, match=r"serialization version 3; .* says 2"):
        redis_layout.require_version(older)


def test_the_dask_reader_we_wrap_is_still_there() -> None:
    feast_internals.check_dask_reader()
    from feast.infra.offline_stores import dask as feast_dask

    original = getattr(feast_dask, feast_internals.DASK_READER)
    with feast_internals.lake_reader(Settings()):
        assert getattr(feast_dask, feast_internals.DASK_READER) is not original
    assert getattr(feast_dask, feast_internals.DASK_READER) is original
