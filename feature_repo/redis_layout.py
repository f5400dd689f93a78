"""Feast's Redis online-store layout, in one place: the streaming job and the batch write it,
the scorer reads it, and no private Feast function is called for it. Feast documents the
layout as a public format (docs: "Redis online store format"):

- a Redis hash per entity, keyed by the entity key serialized (version 3: the number of join
  keys, then each join key name sorted, as type tag STRING, length and UTF-8 bytes; then each
  value as its type tag, length and bytes; all little-endian) followed by the project's name;
- a hash field per feature: the murmur3 32-bit hash (unsigned, 4 bytes little-endian) of
  "<view>:<feature>", holding the value's serialized ValueProto;
- the field "_ts:<view>": the row's event time, a serialized protobuf Timestamp;
- the online store's connection string: "host:port[,name=value...]" (db, password, ssl, ...;
  a value is JSON where it parses as JSON).

tests/test_feast_layout.py holds golden bytes of each part and checks them against what Feast
itself writes and reads through its public API: a Feast upgrade that changes the layout fails
there, in one place. (Feast's own functions for these are private, and change between
releases.)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mmh3
import pyarrow as pa
from feast import FeatureView, ValueType

SERIALIZATION_VERSION = 3
TIMESTAMP_FIELD_PREFIX = "_ts:"


def require_version(repo_config: Any) -> None:
    """Fails unless the repository's entity keys are in the serialization version this layout
    writes and reads."""
    version = repo_config.entity_key_serialization_version
    if version != SERIALIZATION_VERSION:
        raise ValueError(f"entity keys here are Feast's serialization version "
                         f"{SERIALIZATION_VERSION}; the repository's config says {version}")


def feature_field(view: str, feature: str) -> bytes:
    """The hash field of one feature of a view."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> str:
    return f"{TIMESTAMP_FIELD_PREFIX}{view}"


def view_fields(view: FeatureView) -> tuple[list[str], list[bytes | str]]:
    """(feature names, hash fields) of every feature of the view, the timestamp field last."""
    names = [feature.name for feature in view.features]
    return ([*names, timestamp_field(view.name)],
            [*(feature_field(view.name, name) for name in names), timestamp_field(view.name)])


def _key_prefix(names: Sequence[str]) -> bytes:
    return struct.pack("<I", len(names)) + b"".join(
        struct.pack("<II", ValueType.STRING.value, len(n.encode())) + n.encode() for n in names)


def _encoded(value: Any, value_type: ValueType, name: str) -> bytes:
    """One join key value: its type tag, length and bytes (strings and 64-bit integers: the
    join key types the project has)."""
    if value is None:
        raise ValueError(f"{name}: an entity key is null")
    if value_type == ValueType.STRING:
        data = str(value).encode()
    elif value_type == ValueType.INT64:
        data = struct.pack("<q", int(value))
    else:
        raise ValueError(f"{name}: no Redis key encoding for {value_type} entities")
    return struct.pack("<II", value_type.value, len(data)) + data


def entity_key(join_keys: dict[str, ValueType], values: dict[str, Any], project: str) -> bytes:
    """The Redis key of one entity: `values` by join key name."""
    names = sorted(join_keys)
    return (_key_prefix(names) + b"".join(_encoded(values[n], join_keys[n], n) for n in names)
            + project.encode())


def entity_keys(batch: pa.RecordBatch, join_keys: dict[str, ValueType], project: str
                ) -> list[bytes]:
    """The Redis key of each row's entity, built from the batch's columns."""
    names = sorted(join_keys)
    prefix, tail = _key_prefix(names), project.encode()
    columns = [[_encoded(v, join_keys[n], n) for v in batch.column(n).to_pylist()]
               for n in names]
    return [prefix + b"".join(parts) + tail for parts in zip(*columns, strict=True)]


@dataclass(frozen=True)
class Connection:
    """A parsed connection string: the first node and the client's keyword arguments."""

    host: str
    port: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def password(self) -> str | None:
        return self.options.get("password")

    @property
    def db(self) -> int:
        return int(self.options.get("db", 0))

    @property
    def ssl(self) -> bool:
        return str(self.options.get("ssl", "")).lower() == "true"


def parse_connection_string(text: str) -> Connection:
    nodes = [part for part in text.split(",") if part and "=" not in part]
    if not nodes:
        raise ValueError(f"Redis connection string {text!r}: no host:port")
    host, _, port = nodes[0].rpartition(":")
    options: dict[str, Any] = {}
    for part in text.split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            try:
                options[name] = json.loads(value)
            except json.JSONDecodeError:
                options[name] = value
    return Connection(host or nodes[0], int(port or 6379), options)


def client(online_store_config: Any) -> Any:
    """A redis-py client for the online store (a single Redis: the deployment's ElastiCache
    primary endpoint, or the local redis-server)."""
    import redis

    kind = getattr(online_store_config, "redis_type", "redis")
    kind = getattr(kind, "value", kind)
    if kind != "redis":
        raise ValueError(f"online store redis_type {kind}: only a single Redis is supported")
    connection = parse_connection_string(online_store_config.connection_string)
    return redis.Redis(host=connection.host, port=connection.port, **connection.options)
