"""The Feast feature repository: the one source of truth for entities and feature views.
Floor 2 of the package (propensity/__init__.py): it imports the core only; the jobs and the
scorer stand on it.

`definitions.py` declares them (the feast CLI reads it; the code calls `definitions.build`).
`store(settings)` opens the FeatureStore that feature_store.yaml describes, with its ${...}
values taken from the settings rather than from the process environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

from propensity.settings import Settings

REPO = Path(__file__).resolve().parent


def repo_config(settings: Settings, key_ttl_s: int | None = None) -> RepoConfig:
    """feature_store.yaml with the settings' values; `key_ttl_s` overrides the Redis TTL
    (the streaming job writes session keys with a shorter one)."""
    values = {**os.environ, **settings.to_env()}
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)],
                  (REPO / "feature_store.yaml").read_text())
    config = RepoConfig(**yaml.safe_load(text))
    config.repo_path = REPO
    if key_ttl_s is not None:
        config.online_store.key_ttl_seconds = key_ttl_s
    return config


@contextmanager
def aws_environment(settings: Settings) -> Iterator[None]:
    """The settings' AWS values in the process environment for the duration of the block:
    Feast's offline store reads S3 through s3fs, which takes credentials and region only from
    there (the endpoint travels in each source's s3_endpoint_override)."""
    given = {k: v for k, v in settings.to_env().items() if k.startswith("AWS_")}
    before = {name: os.environ.get(name) for name in given}
    os.environ.update(given)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def store(settings: Settings) -> FeatureStore:
    if "://" not in settings.feast_registry:
        Path(settings.feast_registry).parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(REPO), config=repo_config(settings))


def apply(settings: Settings) -> FeatureStore:
    """Register every definition (idempotent) and return the store."""
    from propensity.feature_repo import definitions

    feature_store = store(settings)
    feature_store.apply(definitions.build(settings))
    return feature_store


def redis_client(settings: Settings) -> Any:
    """A redis-py client of the online store, from its connection string."""
    from propensity.feature_repo import redis_layout

    return redis_layout.client(repo_config(settings).online_store)
