"""Shared fixtures: one real local stack (redis-server + moto server) per test session."""

from __future__ import annotations

import importlib.metadata
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from propensity.ops.testing import running_stack, with_fresh_stream
from propensity.settings import Settings

# The tests' Spark defaults (tests/spark-conf/spark-defaults.conf), for every JVM they start,
# in this process or in the commands they run.
os.environ.setdefault("SPARK_CONF_DIR", str(Path(__file__).parent / "spark-conf"))


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout) unwinds like Ctrl-C, so fixtures stop the servers they began."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# With `make test TEST_WORKERS=N` (pytest-xdist, --dist loadgroup; for a machine with more
# than two cores) a module's tests stay together on one worker, so its module fixtures (a
# Spark session, a trained model, a scorer) are made once; the slowest modules start first, so
# that the longest one is not the last to begin (seconds measured on 2026-12-06, one worker).
# Modules that build the package in the checkout (pip's build/ folder) share a worker. In one
# process (the default) the order is pytest's own.
SLOWEST_FIRST = ("test_training",  # 350 s
                 "test_batch",  # 260 s
                 "test_streaming",  # 220 s
                 "test_demo",  # 160 s
                 "test_install",  # 110 s
                 "test_dataset",  # 90 s
                 "test_kinesis_source")  # 90 s
SAME_WORKER = {"test_install": "builds-in-the-checkout",
               "test_deploy_config": "builds-in-the-checkout"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "numprocesses", None):
        return

    def rank(item: pytest.Item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: a module's own order is kept
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1]
        item.add_marker(pytest.mark.xdist_group(SAME_WORKER.get(name, name)))


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
