"""The streaming job: Kinesis -> stateful sessionization -> Redis (Feast online) + S3 Parquet.

Not built yet (issue 3); the folder is reserved for it.
"""
