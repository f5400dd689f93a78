"""Every touch of Feast's internals, here and nowhere else: Feast changes its private functions
between releases, so each one used is named here and checked by tests/test_feast_layout.py,
which fails loudly, in one place, when an upgrade moves it. (The Redis layout is a published
format, written and read by our own code in redis_layout.py; it needs no internals.)

- the dask offline store's source reader (`feast.infra.offline_stores.dask._read_datasource`),
  replaced for the duration of a retrieval by one that reads a source's date folders as every
  other reader of ours does (propensity/lake.py: a compacted day's outputs, never both them and
  the small objects they replace; dask's own listing would take every object it finds), and as
  one partition: with more than one, dask cannot sort a joined frame that holds a null
  timestamp (an entity without any row) and retrieval fails.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import dask.dataframe as dd
from feast import FileSource
from feast.infra.offline_stores import dask as feast_dask

from propensity.lake import read_table
from propensity.settings import Settings

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
def lake_reader(settings: Settings) -> Iterator[None]:
    """For the block, Feast's dask offline store reads each file source through
    propensity/lake.py (S3 with the settings' endpoint and credentials, or a local folder), as
    one partition."""
    check_dask_reader()
    original = getattr(feast_dask, DASK_READER)

    def read(data_source, repo_path):
        table = read_table(settings, FileSource.get_uri_for_file_path(repo_path,
                                                                     data_source.path))
        if table is None:  # Feast's own error for a missing source
            return original(data_source, repo_path)
        return dd.from_pandas(table.to_pandas(), npartitions=1)

    setattr(feast_dask, DASK_READER, read)
    try:
        yield
    finally:
        setattr(feast_dask, DASK_READER, original)
