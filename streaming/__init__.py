"""The streaming job: Kinesis -> stateful sessionization -> Redis (Feast online) + S3 Parquet.

- kinesis_source.py  Kinesis as a Structured Streaming source (Python Data Source API)
- parse.py           the event contract applied to raw records; packed rows
- sessionize.py      per-session state (the shared feature fold) with late-event handling
- sinks.py           lake, feature archive, quarantine and Redis writes, by each task
- checkpoint.py      what the job keeps beside Spark's files: query tag, parallelism layout
- metrics.py         per-batch CloudWatch metrics
- job.py             the query; also the spark-submit entry point
"""
