"""The streaming job: Kinesis -> contract -> per-session state -> lake, archive, Redis.

`run(settings, ...)` builds the Structured Streaming query and runs it, continuously with a
processing-time trigger, or until everything available has been processed (`until_idle`) for
backfills, tests and the demo. Until idle, the source plans only records that arrived before the
query started and `run` stops the query once a trigger finds nothing new
(`processAllAvailable`): Spark's available-now trigger would do the same on PySpark 4.2+, but on
4.0 (the EMR runtime) a Python source cannot support it and Spark falls back to one batch, which
after a restart is only the checkpoint's uncommitted batch. The same entry point runs
locally and as a continuous EMR step (spark-submit, settings from the environment).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from propensity import aws, feature_repo
from propensity.commandline import log_to_stderr
from propensity.kinesis import list_shards
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.streaming.checkpoint import (
    Checkpoint,
    CheckpointRefused,
    Layout,
    complete_layout,
    requested_layout,
    resolve_layout,
)
from propensity.streaming.kinesis_options import FORMAT, CheckpointStreamMismatch, SourceOptions
from propensity.streaming.kinesis_source import KinesisDataSource
from propensity.streaming.metrics import CloudWatchMetrics, batch_metrics
from propensity.streaming.options import StreamOptions, add_arguments, options_of
from propensity.streaming.parse import PARSED_SCHEMA, parse_batches
from propensity.streaming.sessionize import SessionizeConfig, sessionize
from propensity.streaming.sinks import BatchReport, MicroBatchSink

log = logging.getLogger("propensity.stream")
QUERY_NAME = "propensity-sessionize"


def build_query(spark: SparkSession, settings: Settings, options: StreamOptions,
                sink: MicroBatchSink, layout: Layout) -> StreamingQuery:
    if spark.sparkContext.getConf().get("spark.speculation", "false").lower() == "true":
        # Two attempts of one Kinesis read could record different ends (kinesis_source).
        raise ValueError("the streaming job needs spark.speculation=false (Spark's default): "
                         "its Kinesis reads are recorded once per task")
    spark.dataSource.register(KinesisDataSource)
    # A new checkpoint records this; an existing one keeps its own (streaming.checkpoint).
    spark.conf.set("spark.sql.shuffle.partitions", str(layout.state_partitions))
    source = SourceOptions.from_settings(settings, starting_position=options.starting_position,
                                         max_records_per_batch=options.max_records_per_batch,
                                         until_idle=options.until_idle)
    raw = spark.readStream.format(FORMAT).options(**source.as_options()).load()
    parsed = raw.mapInArrow(partial(parse_batches, buckets=layout.session_buckets),
                            from_arrow_schema(PARSED_SCHEMA))
    sessionized = sessionize(parsed.groupBy("bucket"),
                             SessionizeConfig(settings.session_timeout_s,
                                              settings.watermark_delay_s))
    writer = (sessionized.writeStream.queryName(QUERY_NAME).foreachBatch(sink)
              .option("checkpointLocation", settings.checkpoint_dir))
    trigger_s = 0 if options.until_idle else options.trigger_s
    writer = writer.trigger(processingTime=f"{trigger_s} seconds")
    return writer.start()


class ProgressLog(StreamingQueryListener):
    """One log line per micro-batch: Spark's progress joined with what the sink wrote."""

    def __init__(self, sink: MicroBatchSink, metrics: CloudWatchMetrics | None = None) -> None:
        self.sink = sink
        self.metrics = metrics

    def onQueryStarted(self, event: Any) -> None:
        log.info("query %s started (run %s)", event.name, event.runId)

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        report = self.sink.reports.pop(progress.batchId, None) or BatchReport(
            progress.batchId)
        state_rows = sum(op.numRowsTotal for op in progress.stateOperators)
        log.info(
            "batch %d: input %d rows, %d events counted in %d sessions, %d state rows, "
            "quarantined %s, batch %.2f s (sink %.2f s in %d tasks), "
            "freshness p50 %.2f s max %.2f s",
            progress.batchId, progress.numInputRows, report.events, report.sessions,
            state_rows, report.quarantined, progress.batchDuration / 1000, report.write_s,
            report.tasks, report.freshness_quantile(0.5) or 0.0,
            max(report.freshness_s, default=0.0))
        if report.online_retries:
            log.warning("batch %d: %d Redis writes repeated while Redis was unavailable",
                        progress.batchId, report.online_retries)
        if self.metrics is not None:
            self.metrics.publish(batch_metrics(progress.batchDuration, progress.numInputRows,
                                               report.freshness_quantile(0.5)))
        log.debug("batch %d durations (ms): %s; state: %s", progress.batchId,
                  progress.durationMs, [op.json for op in progress.stateOperators])

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        if event.exception:
            log.error("query terminated: %s", event.exception)


@dataclass(frozen=True)
class CheckedLayout:
    layout: Layout
    recorded: bool  # the checkpoint keeps it; otherwise its zeros are filled and it is recorded


def checked_layout(settings: Settings) -> CheckedLayout:
    """The parallelism the query runs with: the checkpoint's, or the settings' for a new one
    (zeros are filled once Spark runs). Raises CheckpointLayoutMismatch before Spark starts."""
    checkpoint = Checkpoint(settings)
    recorded = checkpoint.recorded_layout()
    return CheckedLayout(resolve_layout(requested_layout(settings), recorded,
                                        checkpoint.directory), recorded is not None)


def start(settings: Settings, options: StreamOptions, spark: SparkSession,
          checked: CheckedLayout | None = None) -> tuple[StreamingQuery, ProgressLog]:
    """Register the feature repo and start the query; returns at once with the query and its
    progress listener (remove it with spark.streams.removeListener when done). `checked` is
    the checkpoint's layout when the caller has read it already."""
    checked = checked or checked_layout(settings)
    layout = checked.layout
    if not checked.recorded:  # a new checkpoint: its layout, fixed from now on
        layout = complete_layout(layout, spark.sparkContext.defaultParallelism)
        Checkpoint(settings).record_layout(layout)
    feature_repo.apply(settings)
    sink = MicroBatchSink(settings)
    listener = ProgressLog(sink, CloudWatchMetrics(settings) if settings.metrics_namespace
                           else None)
    spark.streams.addListener(listener)
    query = build_query(spark, settings, options, sink, layout)
    log.info("state partitions %d, session buckets %d (checkpoint %s)",
             layout.state_partitions, layout.session_buckets, settings.checkpoint_dir)
    listener.query_id = str(query.id)
    return query, listener


def run(settings: Settings, options: StreamOptions, spark: SparkSession | None = None) -> None:
    """Run the job until it stops (until idle, or forever)."""
    # A missing stream or unreachable endpoint, or a checkpoint kept for other settings: one
    # clear error now, not Spark's in 10 s.
    checked = checked_layout(settings)
    list_shards(aws.client("kinesis", settings), settings.kinesis_stream)
    spark = spark or spark_session("propensity-stream", settings.spark_master,
                                   long_running=True)
    query, listener = start(settings, options, spark, checked)
    try:
        if options.until_idle:
            query.processAllAvailable()
        else:
            query.awaitTermination()
    finally:
        if query.isActive:
            query.stop()
        spark.streams.removeListener(listener)


def run_or_explain(settings: Settings, options: StreamOptions) -> int:
    """Runs the job; a checkpoint it must not use is one line on stderr and exit code 2."""
    from pyspark.errors import StreamingQueryException

    try:
        run(settings, options)
    except CheckpointRefused as exc:
        print(f"propensity: error: {exc}", file=sys.stderr)
        return 2
    except StreamingQueryException as exc:
        # Spark wraps the source's error in its own (with the plan): the gist on one line.
        mismatch = CheckpointStreamMismatch.message_in(exc)
        if mismatch is None:
            raise
        print(f"propensity: error: checkpoint {settings.checkpoint_dir}: {mismatch}",
              file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """The spark-submit entry point (the EMR streaming step): `propensity stream`'s
    arguments."""
    parser = argparse.ArgumentParser(prog="streaming/job.py",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    log_to_stderr(verbose=args.verbose)
    return run_or_explain(Settings(), options_of(args))


if __name__ == "__main__":
    sys.exit(main())
