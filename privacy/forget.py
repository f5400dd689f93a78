"""Forgetting one shopper everywhere the system keeps them:

- the event lake, the feature archive (every view), the quarantine and the prediction log:
  each Parquet object that holds one of their rows is rewritten without them, under its own
  name (one PUT: a reader sees the object before or after, never half of it), or removed when
  nothing else is left in it; objects a compaction replaced but has not removed yet are
  rewritten too. Their rows are those with their user id, and in views keyed by session those
  of their sessions (found in the lake, the archive and the log). The quarantine keeps what
  was received as text: a row goes when its payload names their user id or one of their
  sessions (erring towards removing a rejected row, never towards keeping them).
- the online store: their user entity and their sessions' entities (session and session x
  product) in Feast's Redis layout.
- an audit record: `<lake bucket folder>/audit/forget/<time>-<digest>.json` and the log: when,
  the SHA-256 of the user id (pseudonymous: it identifies the request for whoever knows the id)
  and the counts per place. Never a row.

Idempotent: a second run finds nothing and records zeros. Not while a compaction of the same
days runs: one that read an object before it was rewritten would commit the shopper's rows
again (a second run removes them). Models trained before stay as they are; the README says when
retraining forgets too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propensity import events, feature_repo
from propensity import features as F
from propensity.feature_repo import definitions, redis_layout
from propensity.lake import Dataset, dataset_uri, every_object, filesystem_of
from propensity.settings import Settings

log = logging.getLogger("propensity.forget")

AUDIT_FOLDER = "audit/forget"
SESSION = "user_session"  # the lake's and the payload's name of F.SESSION_ID
# The columns that say whose a row is, in any dataset.
MASK_COLUMNS = (F.USER_ID, F.SESSION_ID, SESSION, events.PAYLOAD)


@dataclass
class Removed:
    rows: int = 0
    objects_rewritten: int = 0
    objects_removed: int = 0


@dataclass
class Forgotten:
    """What forgetting one shopper removed (counts only)."""

    user_sha256: str
    at: str
    sessions: int = 0
    removed: dict[str, Removed] = field(default_factory=dict)  # by dataset
    online_keys: int = 0

    def total_rows(self) -> int:
        return sum(r.rows for r in self.removed.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def format(self) -> str:
        places = ", ".join(f"{name} {r.rows:,} rows ({r.objects_rewritten} objects rewritten,"
                           f" {r.objects_removed} removed)" for name, r in self.removed.items())
        return (f"forgot user sha256:{self.user_sha256[:16]}: {self.sessions} sessions; "
                f"{places}; online store {self.online_keys} keys")


def user_digest(user_id: int) -> str:
    return hashlib.sha256(str(user_id).encode()).hexdigest()


def audit_uri(settings: Settings) -> str:
    """Where forget records go: beside the lake, in a folder no retention rule expires."""
    return f"{settings.events_uri.rstrip('/').rsplit('/', 1)[0]}/{AUDIT_FOLDER}"


def forget(settings: Settings, user_id: int, now: datetime | None = None) -> Forgotten:
    """Removes the shopper everywhere (see the module's docstring) and records it."""
    now = now or datetime.now(UTC)
    record = Forgotten(user_digest(user_id), now.isoformat())
    sessions = sessions_of(settings, user_id)
    record.sessions = len(sessions)
    products = _session_products(settings, sessions)
    for dataset in Dataset:
        keep = _keeper(dataset, user_id, sessions)
        record.removed[dataset.value] = _rewrite(settings, dataset_uri(settings, dataset), keep)
    record.online_keys = _forget_online(settings, user_id, sessions, products)
    _write_audit(settings, record, now)
    log.info("%s", record.format())
    return record


def sessions_of(settings: Settings, user_id: int) -> set[str]:
    """The session ids the shopper's rows name in the lake, the archive and the log."""
    found: set[str] = set()
    for uri, column in ((settings.events_uri, SESSION),
                        (dataset_uri(settings, Dataset.ARCHIVE), F.SESSION_ID),
                        (settings.predictions_uri, F.SESSION_ID)):
        for table in _tables(settings, uri, [F.USER_ID, column]):
            if {F.USER_ID, column} <= set(table.column_names):
                mine = table.filter(pc.equal(table[F.USER_ID], user_id))
                found.update(v for v in mine[column].to_pylist() if v is not None)
    return found


def _session_products(settings: Settings, sessions: set[str]) -> set[tuple[str, int]]:
    """(session, product) pairs of the sessions: the session x product entities online."""
    pairs: set[tuple[str, int]] = set()
    if not sessions:
        return pairs
    wanted = pa.array(sorted(sessions))
    for uri, column in ((settings.events_uri, SESSION),
                        (dataset_uri(settings, Dataset.ARCHIVE), F.SESSION_ID)):
        for table in _tables(settings, uri, [column, F.PRODUCT_ID]):
            if {column, F.PRODUCT_ID} <= set(table.column_names):
                mine = table.filter(pc.is_in(table[column], wanted))
                pairs.update(zip(mine[column].to_pylist(), mine[F.PRODUCT_ID].to_pylist(),
                                 strict=True))
    return {(s, p) for s, p in pairs if s is not None and p is not None}


def _keeper(dataset: Dataset, user_id: int, sessions: set[str]):
    """The rows of a table that stay: a boolean mask function."""
    wanted = pa.array(sorted(sessions), pa.string())
    pattern = payload_pattern(user_id, sessions)

    def keep(table: pa.Table) -> pa.Array:
        names = set(table.column_names)
        gone = pa.array([False] * table.num_rows)
        if F.USER_ID in names:
            gone = pc.or_kleene(gone, pc.fill_null(pc.equal(table[F.USER_ID], user_id), False))
        for column in (F.SESSION_ID, SESSION):
            if column in names and dataset is not Dataset.LAKE:
                gone = pc.or_(gone, pc.fill_null(pc.is_in(table[column], wanted), False))
        if events.PAYLOAD in names:
            gone = pc.or_(gone, pc.fill_null(
                pc.match_substring_regex(table[events.PAYLOAD], pattern), False))
        return pc.invert(gone)

    return keep


def payload_pattern(user_id: int, sessions: Iterable[str]) -> str:
    """A regular expression (RE2) matching a payload that names the user id as a whole number
    or one of the sessions."""
    alternatives = [f"(^|[^0-9.]){user_id}([^0-9.]|$)"]
    alternatives += [re.escape(s) for s in sorted(sessions) if s]
    return "|".join(alternatives)


def _tables(settings: Settings, uri: str, columns: list[str]) -> Iterable[pa.Table]:
    """Each object's table (only `columns` it has), every object: visible or not."""
    filesystem, root = filesystem_of(settings, uri)
    for path, _ in every_object(filesystem, root):
        with filesystem.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            yield parquet.read(columns=present)


def _rewrite(settings: Settings, uri: str, keep: Any) -> Removed:
    """Each object holding rows `keep` drops, rewritten without them (read whole only then)."""
    removed = Removed()
    filesystem, root = filesystem_of(settings, uri)
    for path, _ in every_object(filesystem, root):
        with filesystem.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            keys = [c for c in MASK_COLUMNS if c in parquet.schema_arrow.names]
            if not keys or pc.all(keep(parquet.read(columns=keys))).as_py() is not False:
                continue
            table = parquet.read()
        kept = table.filter(keep(table))
        removed.rows += table.num_rows - kept.num_rows
        if kept.num_rows:
            pq.write_table(kept, path, filesystem=filesystem, compression="zstd")
            removed.objects_rewritten += 1
        else:
            filesystem.delete_file(path)
            removed.objects_removed += 1
    return removed


def _forget_online(settings: Settings, user_id: int, sessions: set[str],
                   products: set[tuple[str, int]]) -> int:
    config = feature_repo.repo_config(settings)
    redis_layout.require_version(config)
    client = redis_layout.client(config.online_store)
    keys = []
    by_view = {F.USER_VIEW: [{F.USER_ID: user_id}],
               F.SESSION_VIEW: [{F.SESSION_ID: s} for s in sorted(sessions)],
               F.SESSION_PRODUCT_VIEW: [{F.SESSION_ID: s, F.PRODUCT_ID: p}
                                        for s, p in sorted(products)]}
    for view, entities in by_view.items():
        join = definitions.join_keys(definitions.feature_view(settings, view))
        keys += [redis_layout.entity_key(join, values, config.project) for values in entities]
    return int(client.delete(*keys)) if keys else 0


def _write_audit(settings: Settings, record: Forgotten, now: datetime) -> None:
    filesystem, root = filesystem_of(settings, audit_uri(settings))
    path = f"{root}/{now:%Y%m%dT%H%M%S%fZ}-{record.user_sha256[:16]}.json"
    with filesystem.open_output_stream(path) as stream:
        stream.write(record.to_json().encode())
