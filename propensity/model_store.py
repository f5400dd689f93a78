"""The model store on S3: immutable versions and a movable `latest`.

Layout under PROPENSITY_MODELS_URI:
    propensity/<version>/model.txt     the booster (LightGBM text format)
    propensity/<version>/model.json    columns in order, calibration, metadata (data ranges,
                                       validation metrics, behavioural checks)
    propensity/<version>/...           metrics.json, model_card.md, plots (PNG)
    propensity/latest.json             {"version": ..., "history": [earlier latest versions]}

A version is written once and never changed; `latest` moves to a version only when it passed
its behavioural checks, and automatically only when it beats the current one on validation AUC.
Rollback moves `latest` back to the version it replaced.
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
    from botocore.exceptions import ClientError

    bucket, prefix = _prefix(settings)
    try:
        return _client(settings).get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


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
    return json.loads(data) if data is not None else {"version": None, "history": []}


def latest(settings: Settings) -> str | None:
    return _pointer(settings)["version"]


def _set_pointer(settings: Settings, pointer: dict) -> None:
    bucket, prefix = _prefix(settings)
    _client(settings).put_object(Bucket=bucket, Key=prefix + LATEST,
                                 Body=json.dumps(pointer).encode())


def list_versions(settings: Settings) -> list[VersionInfo]:
    bucket, prefix = _prefix(settings)
    pages = _client(settings).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/")
    names = sorted(p["Prefix"][len(prefix):].rstrip("/")
                   for page in pages for p in page.get("CommonPrefixes", []))
    current = latest(settings)
    infos = []
    for name in names:
        spec = _spec(settings, name)
        if spec is None:
            continue
        meta = spec.get("metadata", {})
        infos.append(VersionInfo(
            name, meta.get("validation", {}).get("roc_auc"), bool(meta.get("checks_passed")),
            meta.get("trained_on", ""), name == current))
    return infos


def promote(settings: Settings, version: str) -> None:
    """Moves `latest` to a stored version that passed its behavioural checks."""
    spec = _spec(settings, version)
    if spec is None:
        raise ModelStoreError(f"no model version {version!r} in {settings.models_uri}")
    if not spec.get("metadata", {}).get("checks_passed"):
        raise ModelStoreError(f"version {version} failed its behavioural checks")
    pointer = _pointer(settings)
    if pointer["version"] == version:
        return
    history = [*pointer["history"], pointer["version"]] if pointer["version"] else []
    _set_pointer(settings, {"version": version, "history": history})


def rollback(settings: Settings) -> str:
    """Moves `latest` back to the version it replaced; returns that version."""
    pointer = _pointer(settings)
    if not pointer["history"]:
        raise ModelStoreError("nothing to roll back to: `latest` has no earlier version")
    *history, previous = pointer["history"]
    _set_pointer(settings, {"version": previous, "history": history})
    return previous


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
    current_auc = None
    if current is not None:
        spec = _spec(settings, current) or {}
        current_auc = spec.get("metadata", {}).get("validation", {}).get("roc_auc")
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
