"""Shared fixtures: one real local stack (redis-server + moto server) per test session."""

from __future__ import annotations

import importlib.metadata
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from propensity.settings import Settings
from propensity.testing import running_stack, with_fresh_stream


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout) unwinds like Ctrl-C, so fixtures stop the servers they began."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _pyspark() -> str:
    try:
        return f"pyspark {importlib.metadata.version('pyspark')}"
    except importlib.metadata.PackageNotFoundError:
        return "pyspark: not installed"


def pytest_report_header(config: pytest.Config) -> str:
    """Which Spark this run is on (`make test` runs the jobs' tests on two)."""
    return _pyspark()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The same at the end, which `-q` keeps."""
    terminalreporter.write_line(f"ran on {_pyspark()}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_stack(tmp_path_factory.mktemp("stack")) as settings:
        yield settings


@pytest.fixture
def stream(stack: Settings) -> Settings:
    """Settings of the shared stack with a new, empty Kinesis stream of two shards."""
    return with_fresh_stream(stack, shards=2)
