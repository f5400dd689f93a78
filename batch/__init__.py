"""The daily batch job (an EMR step in production): imports historical files into the event
lake, computes user and product aggregates as daily point-in-time snapshots, validates them and
publishes them to Feast's offline store (S3 Parquet) and online store (Redis).
A job on floor 3 of the package (propensity/__init__.py): it imports the core and Feast's
definitions only, never another job or the operator's layer.

- lake.py        the event lake as a Spark DataFrame (Python data source over S3 Parquet)
- importer.py    REES46 files into the lake through the event contract
- aggregates.py  the user and product features, as of the end of each day (Spark)
- checks.py      validation of computed features before anything is published
- publish.py     offline Parquet per date, the latest snapshot to Redis
- request.py     what a run is asked to do, and the arguments that say it
- job.py         the whole run; also the spark-submit entry point (errors.py: its errors)
"""
