"""AWS clients built from the settings, and provisioning of the stream and buckets.

The same code talks to moto on 127.0.0.1 and to real AWS: only the settings differ. boto3
clients do not pickle, so Spark code must call these factories lazily on the executor.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config

from propensity.settings import Settings

# botocore's own retries stay modest: callers retry throttling with backoff themselves, and
# must know how many retries happened.
_CLIENT_CONFIG = Config(retries={"max_attempts": 2, "mode": "standard"},
                        connect_timeout=5, read_timeout=30, max_pool_connections=16)


def client(service: str, settings: Settings) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        aws_access_key_id=_secret(settings.aws_access_key_id),
        aws_secret_access_key=_secret(settings.aws_secret_access_key),
        config=_CLIENT_CONFIG,
    )


def get_object(s3: Any, bucket: str, key: str) -> bytes | None:
    """An S3 object's bytes through an S3 client; None when there is no such key."""
    from botocore.exceptions import ClientError

    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


# S3's DeleteObjects takes at most this many keys a request.
DELETE_BATCH = 1000


def delete_keys(settings: Settings, paths: list[str]) -> None:
    """Removes S3 objects given as pyarrow paths (`bucket/key`), a thousand a request; a key
    already gone is no error (S3 says so for DeleteObjects)."""
    s3 = client("s3", settings)
    by_bucket: dict[str, list[str]] = {}
    for path in paths:
        bucket, key = path.split("/", 1)
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), DELETE_BATCH):
            done = s3.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + DELETE_BATCH]],
                "Quiet": True})
            if done.get("Errors"):
                first = done["Errors"][0]
                raise OSError(f"S3 kept {len(done['Errors'])} objects of s3://{bucket}: "
                              f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")


def _secret(value: Any) -> str | None:
    return None if value is None else value.get_secret_value()


def backoff_delays(base: float = 0.05, cap: float = 5.0) -> Iterator[float]:
    """Exponential backoff with full jitter: 0..base, 0..2*base, ... capped at `cap`."""
    attempt = 0
    while True:
        yield random.uniform(0, min(cap, base * 2**attempt))
        attempt += 1


def ensure_stream(settings: Settings, timeout_s: float = 60) -> None:
    """Create the Kinesis stream unless it exists, and wait until it is active."""
    kinesis = client("kinesis", settings)
    with contextlib.suppress(kinesis.exceptions.ResourceInUseException):
        kinesis.create_stream(StreamName=settings.kinesis_stream,
                              ShardCount=settings.kinesis_shards)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=settings.kinesis_stream,
        WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(timeout_s))},
    )


def ensure_buckets(settings: Settings) -> None:
    s3 = client("s3", settings)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in settings.buckets():
        if bucket in existing:
            continue
        if settings.aws_region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={
                "LocationConstraint": settings.aws_region})


def provision(settings: Settings) -> None:
    """Everything the code expects to exist: the Kinesis stream and the S3 buckets."""
    ensure_stream(settings)
    ensure_buckets(settings)


def wait_for_endpoint(settings: Settings, timeout_s: float = 30) -> None:
    """Block until the AWS endpoint answers (moto takes a moment to start)."""
    deadline = time.monotonic() + timeout_s
    s3 = client("s3", settings)
    while True:
        try:
            s3.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def s3_filesystem(settings: Settings) -> Any:
    """A pyarrow S3 filesystem for the settings (pyspark has no s3a; EMRFS is EMR-only)."""
    from pyarrow import fs

    options: dict[str, Any] = {"region": settings.aws_region}
    if settings.aws_endpoint_url:
        endpoint = urlparse(settings.aws_endpoint_url)
        options["endpoint_override"] = endpoint.netloc
        options["scheme"] = endpoint.scheme
    if settings.aws_access_key_id is not None:
        options["access_key"] = _secret(settings.aws_access_key_id)
        options["secret_key"] = _secret(settings.aws_secret_access_key)
    return fs.S3FileSystem(**options)


def s3_key(uri: str) -> str:
    """`s3://bucket/prefix` as pyarrow's `bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return f"{parsed.netloc}{parsed.path}".rstrip("/")


def s3_location(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, key prefix without a trailing slash; "" for none)."""
    bucket, _, prefix = s3_key(uri).partition("/")
    return bucket, prefix


def parquet_bytes(table: Any) -> bytes:
    """An Arrow table as the bytes of one zstd-compressed Parquet object (what the prediction
    log and the monitor put to S3)."""
    import io

    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()
