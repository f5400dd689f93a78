"""The event lake as a Spark DataFrame: a Python data source that reads the lake's Parquet
objects with pyarrow (pyspark has no s3a; the same code reads S3 on EMR with the instance
role), one partition per group of objects, date partitions pruned by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition

from propensity import aws, events
from propensity.lake import list_objects
from propensity.settings import Settings

FORMAT = "propensity_lake"
# What the batch reads of each event (the lake holds the whole contract plus arrival time).
COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code", "price",
           "user_id", "user_session", "event_id")
# Nullable throughout: the schema Spark declares for a Python data source.
SCHEMA = pa.schema([events.EVENT_SCHEMA.field(name).with_nullable(True) for name in COLUMNS])


def _ddl(schema: pa.Schema) -> str:
    names = {pa.string(): "string", pa.int64(): "bigint", pa.float64(): "double"}
    return ", ".join(f"{f.name} {names.get(f.type, 'timestamp')}" for f in schema)


@dataclass
class ObjectGroup(InputPartition):
    paths: list[str]


class LakeDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> str:
        return _ddl(SCHEMA)

    def reader(self, schema: Any) -> LakeReader:
        return LakeReader(dict(self.options))


class LakeReader(DataSourceReader):
    def __init__(self, options: dict[str, str]) -> None:
        self.settings = Settings(**json.loads(options["settings"]))
        self.paths: list[str] = json.loads(options["paths"])
        self.partitions_wanted = int(options.get("partitions", "4"))

    def partitions(self) -> list[ObjectGroup]:
        groups: list[list[str]] = [[] for _ in range(max(1, self.partitions_wanted))]
        for i, path in enumerate(self.paths):
            groups[i % len(groups)].append(path)
        return [ObjectGroup(paths) for paths in groups if paths]

    def read(self, partition: ObjectGroup) -> Any:
        filesystem = aws.s3_filesystem(self.settings)
        for path in partition.paths:
            table = pq.read_table(path, filesystem=filesystem, columns=list(COLUMNS))
            yield from table.cast(SCHEMA).to_batches(max_chunksize=65_536)


def read_events(spark: SparkSession, settings: Settings, until: date | None = None,
                partitions: int | None = None) -> DataFrame:
    """The lake's events in date folders up to `until` (inclusive) as a DataFrame of COLUMNS,
    repeats included (the same event may arrive by stream and by import)."""
    spark.dataSource.register(LakeDataSource)
    paths = [path for path, _ in list_objects(settings, settings.events_uri, until)]
    wanted = partitions or spark.sparkContext.defaultParallelism * 2
    return (spark.read.format(FORMAT)
            .option("settings", json.dumps(settings.to_env()))
            .option("paths", json.dumps(paths))
            .option("partitions", str(wanted))
            .load())
