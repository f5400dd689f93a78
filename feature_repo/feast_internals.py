"""Every touch of Feast's internals, here and nowhere else: Feast changes its private functions
between releases, so each one used is named here and checked by tests/test_feast_layout.py,
which fails loudly, in one place, when an upgrade moves it. (The Redis layout is a published
format, written and read by our own code in redis_layout.py; it needs no internals.)

- the dask offline store's source reader (`feast.infra.offline_stores.dask._read_datasource`),
  wrapped so that each source is read as one partition: with more than one, dask cannot sort a
  joined frame that holds a null timestamp (an entity without any row) and retrieval fails.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from feast.infra.offline_stores import dask as feast_dask

DASK_READER = "_read_datasource"
DASK_READER_PARAMETERS = ("data_source", "repo_path")


def check_dask_reader() -> None:
    """Fails with what changed when the dask reader is not the one wrapped here."""
    reader = getattr(feast_dask, DASK_READER, None)
    if reader is None:
        raise RuntimeError(f"Feast's dask offline store has no {DASK_READER} any more: "
                           "feature_repo/feast_internals.py needs a new way to read each "
                           "source as one partition")
    parameters = tuple(inspect.signature(reader).parameters)
    if parameters != DASK_READER_PARAMETERS:
        raise RuntimeError(f"Feast's {DASK_READER}{parameters}: wrapped for "
                           f"{DASK_READER_PARAMETERS}")


@contextmanager
def one_partition_sources() -> Iterator[None]:
    """For the block, Feast's dask offline store reads each source as one partition."""
    check_dask_reader()
    original = getattr(feast_dask, DASK_READER)

    def read(data_source, repo_path):
        return original(data_source, repo_path).repartition(npartitions=1)

    setattr(feast_dask, DASK_READER, read)
    try:
        yield
    finally:
        setattr(feast_dask, DASK_READER, original)
