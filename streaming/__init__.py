"""The streaming job: Kinesis -> stateful sessionization -> Redis (Feast online) + S3 Parquet.
A job on floor 3 of the package (propensity/__init__.py): it imports the core and Feast's
definitions only, never another job or the operator's layer.

- kinesis_source.py  Kinesis as a Structured Streaming source (Python Data Source API);
                     its options, rows and offsets in kinesis_options.py, its shard reads in
                     kinesis_shards.py
- parse.py           the event contract applied to raw records; packed rows
- sessionize.py      per-session state (the shared feature fold) with late-event handling
- sinks.py           each task's writes of a micro-batch, and the batch's report
- destinations.py    lake, feature archive, quarantine and Redis, each behind write(table, part)
- checkpoint.py      what the job keeps beside Spark's files: query tag, parallelism layout
- metrics.py         per-batch CloudWatch metrics
- options.py         what a run is asked to do, and the arguments that say it
- job.py             the query; also the spark-submit entry point
"""
