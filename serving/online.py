"""Online features for scoring, read from Feast's Redis online store.

`RedisFeatures` (the default): every feature view a request needs, for every session of a
batch, in one pipelined Redis round trip (serving/redis_wire.py); keys and hash fields in
Feast's published layout (feature_repo/redis_layout.py), values decoded by Feast's own
`ValueProto` and type map.
`FeastFeatures` (PROPENSITY_SERVING_FEAST_ASYNC=true): Feast's `get_online_features_async`,
one call per view group; slower, and the reference the fast path is tested against.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from feast import FeatureView, ValueType
from feast.online_response import TIMESTAMP_POSTFIX
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp

from propensity import feature_repo
from propensity import features as F
from propensity.feature_repo import definitions, redis_layout
from propensity.serving.redis_wire import RedisWire, pack_args
from propensity.settings import Settings

VIEWS = (F.SESSION_VIEW, F.SESSION_PRODUCT_VIEW, F.USER_VIEW, F.PRODUCT_VIEW)
SESSION_VIEWS = (F.SESSION_VIEW, F.SESSION_PRODUCT_VIEW)


@dataclass(frozen=True)
class Entities:
    session_id: str
    user_id: int | None = None
    product_id: int | None = None

    def join_values(self) -> dict[str, Any]:
        return {F.SESSION_ID: self.session_id, F.USER_ID: self.user_id,
                F.PRODUCT_ID: self.product_id}


@dataclass
class Found:
    """One request's online features: every feature of every view (None when missing)."""

    values: dict[str, Any]
    updated_at: dict[str, datetime]  # view -> time of its stored row, for rows found

    def session_updated_at(self) -> datetime | None:
        times = [self.updated_at[v] for v in SESSION_VIEWS if v in self.updated_at]
        return max(times) if times else None


ALL_FEATURES = tuple(f.name for f in (*F.SESSION_FEATURES, *F.SESSION_PRODUCT_FEATURES,
                                      *F.USER_FEATURES, *F.PRODUCT_FEATURES))


def empty() -> Found:
    return Found(dict.fromkeys(ALL_FEATURES), {})


@functools.lru_cache(maxsize=200_000)
def _value(raw: bytes | None) -> Any:
    """A stored feature value (Feast's serialized ValueProto) as a Python value, by Feast's
    type map; cached by the bytes, since counts, flags and types repeat across sessions."""
    return feast_value_type_to_python_type(ValueProto.FromString(raw)) if raw else None


def _timestamp(raw: bytes) -> datetime:
    """The `_ts:<view>` field: a protobuf Timestamp, as Feast writes and reads it."""
    stamp = Timestamp.FromString(raw)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)


@dataclass(frozen=True)
class _ViewPlan:
    view: FeatureView
    join_keys: dict[str, ValueType]
    names: list[str]  # feature names, then Feast's timestamp field name
    fields: list[str | bytes]  # Redis hash fields in the same order

    def hmget(self, key: bytes) -> bytes:
        """HMGET key <fields> in the Redis protocol; the fields' part is packed once."""
        return (b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n" % (len(self.fields) + 2, len(key), key)
                + self.packed_fields)

    @functools.cached_property
    def packed_fields(self) -> bytes:
        return pack_args(self.fields)


class RedisFeatures:
    """The pipelined reader. Create it inside the event loop that will use it."""

    def __init__(self, settings: Settings) -> None:
        self.config = feature_repo.repo_config(settings)
        redis_layout.require_version(self.config)
        self.plans = []
        for name in VIEWS:
            view = definitions.feature_view(settings, name)
            names, fields = redis_layout.view_fields(view)
            self.plans.append(_ViewPlan(view, definitions.join_keys(view), names, fields))
        self.plans_by_view = {plan.view.name: plan for plan in self.plans}
        self._client: Any = None

    def client(self) -> RedisWire:
        if self._client is None:
            self._client = RedisWire.from_connection(redis_layout.parse_connection_string(
                self.config.online_store.connection_string))
        return self._client

    def _key(self, plan: _ViewPlan, values: dict[str, Any]) -> bytes | None:
        key_values = tuple(values[k] for k in plan.join_keys)
        if any(v is None for v in key_values):
            return None
        return self._redis_key(plan.view.name, key_values)

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one reader per process, kept for good)
    def _redis_key(self, view_name: str, key_values: tuple) -> bytes:
        """Feast's Redis key of an entity (cached: a session asks again and again)."""
        join_keys = self.plans_by_view[view_name].join_keys
        return redis_layout.entity_key(join_keys, dict(zip(join_keys, key_values, strict=True)),
                                       self.config.project)

    async def read(self, requests: list[Entities]) -> list[Found]:
        """Every view's features for each request, in one round trip."""
        commands = []  # (request index, plan, key)
        for i, entities in enumerate(requests):
            values = entities.join_values()
            for plan in self.plans:
                key = self._key(plan, values)
                if key is not None:
                    commands.append((i, plan, key))
        replies = await self.client().pipeline_packed(
            b"".join(plan.hmget(key) for _, plan, key in commands),
            len(commands)) if commands else []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        found = [empty() for _ in requests]
        for (i, plan, _), reply in zip(commands, replies, strict=True):
            if reply[-1] is None:  # no timestamp: the entity is not stored
                continue
            found[i].updated_at[plan.view.name] = _timestamp(reply[-1])
            values = found[i].values
            for name, raw in zip(plan.names[:-1], reply[:-1], strict=True):
                values[name] = _value(raw)
        return found

    async def ping(self) -> bool:
        return (await self.client().pipeline([[b"PING"]])) == [b"PONG"]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


class FeastFeatures:
    """Feast's own async online read (`get_online_features_async`), per group of views that
    share the entities a request has."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.feature_store = feature_repo.apply(settings)  # idempotent: the views exist
        self.views = [definitions.feature_view(settings, name) for name in VIEWS]

    async def read(self, requests: list[Entities]) -> list[Found]:
        found = [empty() for _ in requests]
        for view in self.views:
            keys = list(definitions.join_keys(view))
            rows = [(i, {k: r.join_values()[k] for k in keys}) for i, r in enumerate(requests)
                    if all(r.join_values()[k] is not None for k in keys)]
            if not rows:
                continue
            refs = [f"{view.name}:{f.name}" for f in view.features]
            response = await self.feature_store.get_online_features_async(
                features=refs, entity_rows=[row for _, row in rows])
            columns = response.to_dict(include_event_timestamps=True)
            first = view.features[0].name
            for position, (i, _) in enumerate(rows):
                values = {f.name: columns[f.name][position] for f in view.features}
                if all(v is None for v in values.values()):
                    continue
                found[i].values.update(values)
                # Feast gives whole seconds here.
                found[i].updated_at[view.name] = datetime.fromtimestamp(
                    columns[f"{first}{TIMESTAMP_POSTFIX}"][position], UTC)
        return found

    async def ping(self) -> bool:
        return bool(feature_repo.redis_client(self.settings).ping())

    async def close(self) -> None:
        return None
