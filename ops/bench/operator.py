"""The stateful operator's cost per session per micro-batch, for each operator PySpark offers.

    python -m propensity.ops.bench.operator [--batches 8] [--events 20000] [--sessions 5000]

The same input for every operator: micro-batches of `--events` events in `--sessions`
sessions (half of them continuing from the batch before, so state carries over and grows),
packed by the contract stage (streaming.parse) as the job packs them, written as one Parquet
file per batch and read back one file per trigger. Each operator runs the job's own fold
(streaming.sessionize.sessionize_bucket) grouped by the job's session bucket; the sink is
Spark's `noop`. The figure is the median batch time (Spark's `addBatch`: shuffle, operator,
sink) after two warm-up batches, divided by the sessions in a batch. Generated data.

Operators:
- rows:         transformWithState (rows), MapState keyed by session (PySpark 4.1+ only;
                the job's operator before it ran on the EMR runtime too)
- pandas:       transformWithStateInPandas, MapState keyed by session (the job's operator)
- pandas-state: applyInPandasWithState, the bucket's sessions in its one state value (fails
                inside PySpark 4.0.2's own serializer with this project's pandas and pyarrow)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
from pyspark.sql import DataFrame, GroupedData, Row
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming.state import GroupState
from pyspark.sql.types import BinaryType, LongType, StructField, StructType

from propensity.ops.testing import MemorySessionStore
from propensity.spark import spark_session
from propensity.streaming import sessionize as S
from propensity.streaming.kinesis_options import RAW_SCHEMA
from propensity.streaming.parse import PARSED_SCHEMA, parse_batches

OPERATORS = ("rows", "pandas", "pandas-state")
_START_US = 1_569_888_000_000_000  # 2019-10-01 00:00 UTC
_BATCH_US = 2_000_000  # event time advances by one 2-second trigger per batch
CONFIG = S.SessionizeConfig(session_timeout_s=1800, watermark_delay_s=600)


def raw_batch(batch: int, events: int, sessions: int) -> pa.RecordBatch:
    """Kinesis rows of one batch: `sessions` sessions of events / sessions events each, the
    first half of them the second half of the batch before."""
    per_session = events // sessions
    payloads, sequences = [], []
    for i in range(sessions * per_session):
        session = batch * (sessions // 2) + i // per_session
        time_us = _START_US + batch * _BATCH_US + (i % per_session) * 1000
        payloads.append(orjson.dumps({
            "event_time": pd.Timestamp(time_us, unit="us", tz="UTC").isoformat(),
            "event_type": ("view", "view", "cart", "view")[i % 4],
            "product_id": str(1000 + (session * 7 + i) % 500), "category_id": "1",
            "category_code": "", "brand": "b", "price": "9.99",
            "user_id": str(10_000 + session), "user_session": f"session-{session}"}))
        sequences.append(str(batch * events + i).zfill(20))
    rows = len(payloads)
    return pa.RecordBatch.from_arrays([
        pa.array(["shard-0"] * rows), pa.array(sequences), pa.array([0] * rows, pa.int32()),
        pa.array([_START_US + batch * _BATCH_US] * rows, pa.int64()).cast(
            pa.timestamp("us", tz="UTC")),
        pa.array(payloads, pa.binary())], schema=RAW_SCHEMA)


def write_input(folder: Path, batches: int, events: int, sessions: int) -> None:
    for batch in range(batches):
        parsed = list(parse_batches(iter([raw_batch(batch, events, sessions)]), S.BUCKETS))
        pq.write_table(pa.Table.from_batches(parsed, PARSED_SCHEMA),
                       folder / f"batch-{batch:04d}.parquet")


_BUCKET_STATE = StructType([StructField("frontier_us", LongType()),
                            StructField("last_scan_us", LongType()),
                            StructField("sessions", BinaryType())])


def _in_band(key: tuple, frames: Iterator[pd.DataFrame], state: GroupState
             ) -> Iterator[pd.DataFrame]:
    """applyInPandasWithState's function: the bucket's sessions travel in its state value."""
    frontier_us, last_scan_us, blob = state.get if state.exists else (0, 0, b"{}")
    frontier_us, last_scan_us = int(frontier_us), int(last_scan_us)  # 4.0 returns floats
    store = MemorySessionStore(orjson.loads(blob))
    pairs = ((s, r) for frame in frames
             for s, r in zip(frame["user_session"], frame["record"], strict=True))
    out, clock = S.sessionize_bucket(CONFIG, int(key[0]), pairs, store,
                                     (frontier_us, last_scan_us) if frontier_us else None)
    if clock is not None:
        state.update((*clock, orjson.dumps(store.sessions)))
    yield S.output_frame(out)


class RowsSessionProcessor(S.SessionProcessor):
    """The job's processor with transformWithState's (rows) input and output."""

    def handleInputRows(self, key: tuple, rows: Iterator[Any], timerValues: Any
                        ) -> Iterator[Row]:
        out = self.fold(key[0], ((row.user_session, row.record) for row in rows))
        return (_OUTPUT_ROW(*row) for row in out)


_OUTPUT_ROW = Row(*S.OUTPUT_SCHEMA.names)


def sessionized(grouped: GroupedData, operator: str) -> DataFrame:
    schema = from_arrow_schema(S.OUTPUT_SCHEMA)
    if operator == "rows":
        return grouped.transformWithState(RowsSessionProcessor(CONFIG), schema, "Append",
                                          "None")
    if operator == "pandas":
        return S.sessionize(grouped, CONFIG)
    return grouped.applyInPandasWithState(_in_band, schema, _BUCKET_STATE, "append",
                                          "NoTimeout")


def run(operator: str, batches: int, events: int, sessions: int) -> dict:
    spark = spark_session("propensity-bench-operator", "local[2]")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "input"
        folder.mkdir()
        write_input(folder, batches, events, sessions)
        stream = (spark.readStream.schema(from_arrow_schema(PARSED_SCHEMA))
                  .option("maxFilesPerTrigger", 1).parquet(str(folder)))
        query = (sessionized(stream.groupBy("bucket"), operator).writeStream.format("noop")
                 .option("checkpointLocation", str(Path(tmp) / "checkpoint"))
                 .trigger(availableNow=True).start())
        started = time.monotonic()
        query.awaitTermination()
        wall_s = time.monotonic() - started
        progress = [p for p in query.recentProgress if p["numInputRows"]]
    spark.stop()
    measured = [p["durationMs"]["addBatch"] for p in progress[2:]]
    median_ms = statistics.median(measured)
    return {"operator": operator, "pyspark": pyspark.__version__, "batches": len(progress),
            "events_per_batch": events, "sessions_per_batch": sessions,
            "batch_ms_median": median_ms, "ms_per_session": round(median_ms / sessions, 4),
            "batch_ms": measured, "wall_s": round(wall_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", choices=OPERATORS, action="append")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=5_000)
    args = parser.parse_args(argv)
    for operator in args.operator or OPERATORS:
        if operator == "rows" and not hasattr(GroupedData, "transformWithState"):
            print(json.dumps({"operator": operator, "pyspark": pyspark.__version__,
                              "skipped": "no transformWithState (rows) before PySpark 4.1"}))
            continue
        print(json.dumps(run(operator, args.batches, args.events, args.sessions)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
