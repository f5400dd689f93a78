"""Shared fixtures: one real local stack (redis-server + moto server) per test session."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from propensity.settings import Settings
from propensity.testing import running_stack, with_fresh_stream

SAMPLE = Path(__file__).resolve().parents[1] / "propensity" / "data" / \
    "multicat-2019-10-01-head.csv.gz"


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout) unwinds like Ctrl-C, so fixtures stop the servers they began."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_stack(tmp_path_factory.mktemp("stack")) as settings:
        yield settings


@pytest.fixture
def stream(stack: Settings) -> Settings:
    """Settings of the shared stack with a new, empty Kinesis stream of two shards."""
    return with_fresh_stream(stack, shards=2)
