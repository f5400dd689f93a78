"""The model store on S3: immutable versions and a movable `latest`.

Layout under PROPENSITY_MODELS_URI:
    propensity/<version>/model.txt     the booster (LightGBM text format)
    propensity/<version>/model.json    columns in order, calibration, metadata (data ranges,
                                       validation metrics, behavioural checks)
    propensity/<version>/...           metrics.json, model_card.md, plots (PNG)
    propensity/latest.json             {"version": ..., "history": [earlier latest versions],
                                        "challenger": {"version", "mode", "share"} or null}

A version is written once and never changed; `latest` (the champion) moves to a version only
when it passed its behavioural checks, and automatically only when it beats the current one on
validation AUC. Beside it, at most one challenger that passed its checks, in canary or in
shadow (propensity/rollout.py); `promote` makes it the champion, `rollback` ends it, or, with no
challenger, moves `latest` back to the version it replaced. The scorer follows `latest.json`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from propensity import aws
from propensity.model import PropensityModel
from propensity.rollout import CANARY, SHADOW, Challenger
from propensity.settings import Settings

MODEL_NAME = "propensity"
LATEST = "latest.json"


class ModelStoreError(RuntimeError):
    """A store operation that cannot be done as asked (unknown version, nothing to roll back)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    validation_auc: float | None
    checks_passed: bool
    trained_on: str
    is_latest: bool
    challenger: Challenger | None = None  # this version's part beside the champion, if any


@dataclass(frozen=True)
class Rollout:
    """What the scorer serves: the champion (`latest`) and the challenger, if any."""

    champion: str | None
    challenger: Challenger | None


def _prefix(settings: Settings) -> tuple[str, str]:
    """(bucket, key prefix ending in /) of the model's folder."""
    bucket, prefix = aws.s3_location(settings.models_uri)
    return bucket, f"{prefix + '/' if prefix else ''}{MODEL_NAME}/"


@functools.lru_cache(maxsize=8)
def _client(settings: Settings) -> Any:
    """One S3 client per settings (boto3 clients are thread-safe; making one costs tens of
    milliseconds of CPU, which the scorer's model poll would pay every time)."""
    return aws.client("s3", settings)


def _get(settings: Settings, key: str) -> bytes | None:
    bucket, prefix = _prefix(settings)
    return aws.get_object(_client(settings), bucket, prefix + key)


def new_version(files: dict[str, bytes], now: datetime | None = None) -> str:
    """A sortable, unique version name: UTC time and a digest of the version's files."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return f"{stamp}-{digest.hexdigest()[:8]}"


def put_version(settings: Settings, files: dict[str, bytes], version: str | None = None
                ) -> str:
    """Stores a new version's files (named by `new_version` unless given); returns its name.
    Never overwrites a version."""
    version = version or new_version(files)
    bucket, prefix = _prefix(settings)
    s3 = _client(settings)
    if s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{version}/", MaxKeys=1).get("KeyCount"):
        raise ModelStoreError(f"version {version} exists already; versions are immutable")
    # The spec last: a version without its model.json is not listed (an interrupted upload).
    ordered = sorted(files, key=lambda name: name == PropensityModel.SPEC_FILE)
    for name in ordered:
        s3.put_object(Bucket=bucket, Key=f"{prefix}{version}/{name}", Body=files[name])
    return version


def _spec(settings: Settings, version: str) -> dict | None:
    data = _get(settings, f"{version}/{PropensityModel.SPEC_FILE}")
    return json.loads(data) if data is not None else None


def _pointer(settings: Settings) -> dict:
    data = _get(settings, LATEST)
    pointer = json.loads(data) if data is not None else {"version": None, "history": []}
    return {"challenger": None, **pointer}  # written before challengers existed: none


def latest(settings: Settings) -> str | None:
    return _pointer(settings)["version"]


def rollout(settings: Settings) -> Rollout:
    """The champion and the challenger, read in one request (the scorer polls this)."""
    pointer = _pointer(settings)
    return Rollout(pointer["version"], Challenger.from_json(pointer["challenger"]))


def _set_pointer(settings: Settings, pointer: dict) -> None:
    bucket, prefix = _prefix(settings)
    _client(settings).put_object(Bucket=bucket, Key=prefix + LATEST,
                                 Body=json.dumps(pointer).encode())


def read_file(settings: Settings, version: str, name: str) -> bytes | None:
    """One file of a stored version (None when the version has no such file)."""
    return _get(settings, f"{version}/{name}")


def metadata_of(settings: Settings, version: str) -> dict:
    """A stored version's metadata (its data, metrics, checks, lineage); {} when unknown."""
    return (_spec(settings, version) or {}).get("metadata", {})


def validation_auc_of(settings: Settings, version: str) -> float | None:
    """The ROC AUC a stored version had on its validation data (None: unknown version)."""
    spec = _spec(settings, version) or {}
    return spec.get("metadata", {}).get("validation", {}).get("roc_auc")


def _checked_spec(settings: Settings, version: str) -> dict:
    """A stored version's spec, if it passed its behavioural checks."""
    spec = _spec(settings, version)
    if spec is None:
        raise ModelStoreError(f"no model version {version!r} in {settings.models_uri}")
    if not spec.get("metadata", {}).get("checks_passed"):
        raise ModelStoreError(f"version {version} failed its behavioural checks")
    return spec


def list_versions(settings: Settings) -> list[VersionInfo]:
    bucket, prefix = _prefix(settings)
    pages = _client(settings).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/")
    names = sorted(p["Prefix"][len(prefix):].rstrip("/")
                   for page in pages for p in page.get("CommonPrefixes", []))
    current = rollout(settings)
    infos = []
    for name in names:
        spec = _spec(settings, name)
        if spec is None:
            continue
        meta = spec.get("metadata", {})
        challenger = current.challenger
        infos.append(VersionInfo(
            name, meta.get("validation", {}).get("roc_auc"), bool(meta.get("checks_passed")),
            meta.get("trained_on", ""), name == current.champion,
            challenger if challenger and challenger.version == name else None))
    return infos


def promote(settings: Settings, version: str | None = None) -> str:
    """Moves `latest` to a stored version that passed its behavioural checks (default: the
    challenger, whose experiment then ends); returns the version."""
    pointer = _pointer(settings)
    challenger = Challenger.from_json(pointer["challenger"])
    if version is None:
        if challenger is None:
            raise ModelStoreError("no challenger to promote: name a version")
        version = challenger.version
    _checked_spec(settings, version)
    if challenger is not None and challenger.version == version:
        pointer["challenger"] = None
    if pointer["version"] != version:
        if pointer["version"]:
            pointer["history"] = [*pointer["history"], pointer["version"]]
        pointer["version"] = version
    _set_pointer(settings, pointer)
    return version


def challenge(settings: Settings, version: str, mode: str, share: float = 0.0) -> Challenger:
    """Makes a stored version that passed its checks the challenger (replacing any other):
    in canary for `share` of the shoppers, or in shadow."""
    challenger = Challenger(version, mode, share if mode == CANARY else 0.0)
    if mode == CANARY and not 0.0 < share < 1.0:
        raise ModelStoreError(f"a canary's share is above 0 and below 1, not {share}: "
                              "use promote to give a version all traffic")
    _checked_spec(settings, version)
    pointer = _pointer(settings)
    if pointer["version"] is None:
        raise ModelStoreError("no champion (`latest`) to challenge: promote a version first")
    if pointer["version"] == version:
        raise ModelStoreError(f"version {version} is the champion already")
    _set_pointer(settings, {**pointer, "challenger": challenger.to_json()})
    return challenger


def canary(settings: Settings, version: str, share: float) -> Challenger:
    return challenge(settings, version, CANARY, share)


def shadow(settings: Settings, version: str) -> Challenger:
    return challenge(settings, version, SHADOW)


@dataclass(frozen=True)
class RolledBack:
    ended_challenger: str | None  # the challenger taken out of traffic, if there was one
    latest: str  # the champion now


def rollback(settings: Settings) -> RolledBack:
    """Ends the challenger if there is one (the champion answers everyone again); else moves
    `latest` back to the version it replaced."""
    pointer = _pointer(settings)
    challenger = Challenger.from_json(pointer["challenger"])
    if challenger is not None:
        _set_pointer(settings, {**pointer, "challenger": None})
        return RolledBack(challenger.version, pointer["version"])
    if not pointer["history"]:
        raise ModelStoreError("nothing to roll back to: no challenger, and `latest` has no "
                              "earlier version")
    *history, previous = pointer["history"]
    _set_pointer(settings, {**pointer, "version": previous, "history": history})
    return RolledBack(None, previous)


@dataclass(frozen=True)
class Registration:
    version: str
    promoted: bool
    reason: str


def register(settings: Settings, files: dict[str, bytes], validation_auc: float | None,
             checks_passed: bool) -> Registration:
    """Stores a version and promotes it when it passed its checks and beats `latest`'s
    validation AUC (or there is no `latest`)."""
    version = put_version(settings, files)
    current = latest(settings)
    current_auc = validation_auc_of(settings, current) if current is not None else None
    if not checks_passed:
        return Registration(version, False, "behavioural checks failed")
    if validation_auc is None:
        return Registration(version, False, "no validation AUC")
    if current_auc is not None and validation_auc <= current_auc:
        return Registration(version, False, f"validation AUC {validation_auc:.4f} does not "
                                            f"beat latest {current} ({current_auc:.4f})")
    promote(settings, version)
    return Registration(version, True, "latest" if current is None else
                        f"beats {current} ({validation_auc:.4f} > {current_auc:.4f})")


def load(settings: Settings, version: str | None = None) -> PropensityModel:
    """A stored version (default: `latest`)."""
    version = version or latest(settings)
    if version is None:
        raise ModelStoreError(f"no `latest` model in {settings.models_uri}: run "
                              "`propensity train` first")
    files = {}
    for name in (PropensityModel.MODEL_FILE, PropensityModel.SPEC_FILE):
        data = _get(settings, f"{version}/{name}")
        if data is None:
            raise ModelStoreError(f"no model version {version!r} in {settings.models_uri}")
        files[name] = data
    return PropensityModel.from_files(files, version)
