"""`ThrottlingProxy` in front of a real moto server: throttled Kinesis calls fail as real
Kinesis fails them (botocore raises the right error), everything else passes through unchanged
(boto3 Kinesis and S3, pyarrow's S3 filesystem, chunked request bodies)."""

from __future__ import annotations

import http.client
import io
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from botocore.parsers import RpcV2CBORParser

from propensity.ops.testing import free_port
from propensity.ops.throttling_proxy import ThrottlingProxy, error_code
from propensity.settings import Settings

_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                "region_name": "us-east-1"}
# `max_attempts` in a Config counts retries; `total_max_attempts` counts the first call too.
_NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
_TARGET = "Kinesis_20131202."


@pytest.fixture(scope="module")
def moto_url(stack: Settings) -> str:
    """The shared stack's moto server (Kinesis and S3 on one endpoint)."""
    return str(stack.aws_endpoint_url)


def _client(service: str, url: str, config: Config | None = None) -> Any:
    return boto3.client(service, endpoint_url=url, config=config, **_CREDENTIALS)


def _stream(url: str, shards: int = 1) -> str:
    kinesis = _client("kinesis", url)
    name = f"proxy-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name,
                                             WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    return name


def _bucket(url: str) -> str:
    name = f"proxy-{uuid.uuid4().hex[:10]}"
    _client("s3", url).create_bucket(Bucket=name)
    return name


def _raw(proxy: ThrottlingProxy, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_get_records_throttled_with_the_throughput_error(moto_url: str) -> None:
    stream = _stream(moto_url)
    with ThrottlingProxy(moto_url, {"GetRecords": 0.5}, seed=7) as proxy:
        kinesis = _client("kinesis", proxy.url, _NO_RETRIES)
        put = kinesis.put_records(StreamName=stream, Records=[
            {"Data": f"event-{i}".encode(), "PartitionKey": str(i)} for i in range(10)])
        assert put["FailedRecordCount"] == 0
        shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard,
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        received: list[bytes] = []
        errors: list[ClientError] = []
        for _ in range(30):
            try:
                answer = kinesis.get_records(ShardIterator=iterator, Limit=3)
            except ClientError as e:
                errors.append(e)
                continue
            received.extend(record["Data"] for record in answer["Records"])
            iterator = answer["NextShardIterator"]

        assert errors and len(errors) < 30
        for e in errors:
            assert e.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
            assert e.response["Error"]["Message"].startswith("Rate exceeded")
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            assert e.operation_name == "GetRecords"
        # A throttled call never reached moto: the shard was read in order, once.
        assert received == [f"event-{i}".encode() for i in range(10)]
        assert proxy.counts == {"PutRecords": 1, "ListShards": 1, "GetShardIterator": 1,
                                "GetRecords": 30}
        assert proxy.throttled == {"GetRecords": len(errors)}
        assert proxy.forwarded == 3 + 30 - len(errors)


def test_control_plane_calls_throttled_with_the_limit_error(moto_url: str) -> None:
    stream = _stream(moto_url)
    throttle = {"GetShardIterator": 1.0, "ListShards": 1.0, "DescribeStreamSummary": 0.0}
    with ThrottlingProxy(moto_url, throttle) as proxy:
        kinesis = _client("kinesis", proxy.url, _NO_RETRIES)
        for call in (lambda: kinesis.list_shards(StreamName=stream),
                     lambda: kinesis.get_shard_iterator(StreamName=stream,
                                                        ShardId="shardId-000000000000",
                                                        ShardIteratorType="LATEST")):
            with pytest.raises(ClientError) as caught:
                call()
            assert caught.value.response["Error"]["Code"] == "LimitExceededException"
            assert stream in caught.value.response["Error"]["Message"]
        summary = kinesis.describe_stream_summary(StreamName=stream)
        assert summary["StreamDescriptionSummary"]["StreamName"] == stream
        assert proxy.throttled == {"GetShardIterator": 1, "ListShards": 1}
        assert proxy.counts["DescribeStreamSummary"] == 1


def test_put_records_throttled_whole_and_retried_by_botocore(moto_url: str) -> None:
    stream = _stream(moto_url)
    with ThrottlingProxy(moto_url, {"PutRecords": 0.5}, seed=1) as proxy:
        patient = _client("kinesis", proxy.url,
                          Config(retries={"max_attempts": 10, "mode": "standard"}))
        for i in range(6):
            answer = patient.put_records(StreamName=stream, Records=[
                {"Data": b"x", "PartitionKey": str(i)}])
            assert answer["FailedRecordCount"] == 0
        # Standard-mode retries treat the throttling error as retryable: every call got through.
        assert proxy.throttled["PutRecords"] > 0
        assert proxy.counts["PutRecords"] == 6 + proxy.throttled["PutRecords"]
    assert error_code("PutRecords") == "ProvisionedThroughputExceededException"
    assert error_code("ListShards") == "LimitExceededException"


def test_throttling_is_deterministic_per_seed(moto_url: str) -> None:
    def pattern(seed: int) -> list[int]:
        with ThrottlingProxy(moto_url, {"ListStreams": 0.5}, seed=seed) as proxy:
            return [_raw(proxy, "POST", "/", b"{}", {
                "X-Amz-Target": f"{_TARGET}ListStreams",
                "Content-Type": "application/x-amz-json-1.1"})[0] for _ in range(24)]

    first = pattern(3)
    assert set(first) == {200, 400}
    assert pattern(3) == first
    assert pattern(4) != first


def test_rejection_in_cbor_for_cbor_requests(moto_url: str) -> None:
    with ThrottlingProxy(moto_url, {"GetRecords": 1.0}) as proxy:
        status, headers, body = _raw(proxy, "POST", "/", b"\xa0", {
            "X-Amz-Target": f"{_TARGET}GetRecords",
            "Content-Type": "application/x-amz-cbor-1.1"})
    assert status == 400
    assert headers["content-type"] == "application/x-amz-cbor-1.1"
    parsed = RpcV2CBORParser()._initial_body_parse(body)
    assert parsed["__type"] == "ProvisionedThroughputExceededException"
    assert parsed["message"].startswith("Rate exceeded")


def test_s3_objects_pass_through_unchanged(moto_url: str) -> None:
    bucket = _bucket(moto_url)
    direct = _client("s3", moto_url)
    with ThrottlingProxy(moto_url, {"GetRecords": 1.0}) as proxy:
        s3 = _client("s3", proxy.url, _NO_RETRIES)
        payload = os.urandom(100_000)
        s3.put_object(Bucket=bucket, Key="a/blob", Body=payload, Metadata={"kind": "test"})
        assert direct.get_object(Bucket=bucket, Key="a/blob")["Body"].read() == payload
        got = s3.get_object(Bucket=bucket, Key="a/blob")
        assert got["Body"].read() == payload
        assert got["Metadata"] == {"kind": "test"}
        ranged = s3.get_object(Bucket=bucket, Key="a/blob", Range="bytes=10-19")
        assert ranged["Body"].read() == payload[10:20]
        assert s3.head_object(Bucket=bucket, Key="a/blob")["ContentLength"] == len(payload)
        with pytest.raises(ClientError) as missing:
            s3.head_object(Bucket=bucket, Key="a/none")
        assert missing.value.response["Error"]["Code"] == "404"
        # A non-seekable body: botocore streams it (aws-chunked with a trailing checksum).
        s3.upload_fileobj(_Unseekable(payload[:5000]), bucket, "a/stream")
        assert direct.get_object(Bucket=bucket, Key="a/stream")["Body"].read() == payload[:5000]
        # Multipart upload: POST ?uploads, PUT parts, POST ?uploadId=, with XML bodies.
        part = os.urandom(5 * 1024 * 1024)
        upload = s3.create_multipart_upload(Bucket=bucket, Key="a/multi")["UploadId"]
        etags = [s3.upload_part(Bucket=bucket, Key="a/multi", UploadId=upload, PartNumber=n,
                                Body=part)["ETag"] for n in (1, 2)]
        s3.complete_multipart_upload(Bucket=bucket, Key="a/multi", UploadId=upload,
                                     MultipartUpload={"Parts": [
                                         {"ETag": etag, "PartNumber": n}
                                         for n, etag in zip((1, 2), etags, strict=True)]})
        assert direct.get_object(Bucket=bucket, Key="a/multi")["Body"].read() == part + part
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]]
        assert keys == ["a/blob", "a/multi", "a/stream"]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a/stream"}]})
        s3.delete_object(Bucket=bucket, Key="a/blob")
        assert [o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]] == [
            "a/multi"]
        assert proxy.counts == {} and proxy.forwarded == 13


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def test_chunked_request_bodies_are_forwarded_whole(moto_url: str) -> None:
    bucket = _bucket(moto_url)
    with ThrottlingProxy(moto_url, {}) as proxy:
        # Unsigned requests, which moto takes as anonymous: new keys only, no reads.
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            connection.request("PUT", f"/{bucket}/chunked",
                               body=iter([b"hello ", b"chunked ", b"world"]),
                               encode_chunked=True)
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b""
            assert not response.will_close  # the proxy keeps the client's connection open
            socket_before = connection.sock
            connection.request("PUT", f"/{bucket}/empty")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b""
            assert connection.sock is socket_before
        finally:
            connection.close()
        s3 = _client("s3", proxy.url)
        assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == b"hello chunked world"
        assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_pyarrow_parquet_through_the_proxy(moto_url: str) -> None:
    bucket = _bucket(moto_url)
    table = pa.table({"user": list(range(20_000)), "event": ["view", "cart"] * 10_000})
    with ThrottlingProxy(moto_url, {"GetRecords": 1.0}) as proxy:
        fs = pafs.S3FileSystem(endpoint_override=urlsplit(proxy.url).netloc, scheme="http",
                               access_key="testing", secret_key="testing", region="us-east-1")
        pq.write_table(table, f"{bucket}/lake/part-0.parquet", filesystem=fs)
        assert pq.read_table(f"{bucket}/lake", filesystem=fs).equals(table)
        # Big enough for a multipart upload from the AWS C++ SDK.
        blob = os.urandom(12 * 1024 * 1024)
        with fs.open_output_stream(f"{bucket}/lake/blob.bin") as out:
            out.write(blob)
        with fs.open_input_file(f"{bucket}/lake/blob.bin") as f:
            assert f.read() == blob
        infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/lake"))
        assert sorted(info.base_name for info in infos) == ["blob.bin", "part-0.parquet"]
        fs.delete_file(f"{bucket}/lake/blob.bin")
        forwarded = proxy.forwarded
    direct = _client("s3", moto_url)
    keys = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys - {"lake/"} == {"lake/part-0.parquet"}  # pyarrow may leave a directory marker
    assert forwarded >= 8


def test_concurrent_clients_are_counted_exactly(moto_url: str) -> None:
    stream = _stream(moto_url, shards=2)
    with ThrottlingProxy(moto_url, {"PutRecords": 0.3, "DescribeStreamSummary": 0.3}) as proxy:
        def work(i: int) -> tuple[int, int]:
            kinesis = _client("kinesis", proxy.url, _NO_RETRIES)
            ok = failed = 0
            for j in range(15):
                try:
                    if j % 3:
                        kinesis.put_records(StreamName=stream, Records=[
                            {"Data": b"x" * 100, "PartitionKey": f"{i}-{j}"}] * 5)
                    else:
                        kinesis.describe_stream_summary(StreamName=stream)
                    ok += 1
                except ClientError as e:
                    assert e.response["Error"]["Code"] in (
                        "ProvisionedThroughputExceededException", "LimitExceededException")
                    failed += 1
            return ok, failed

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        assert proxy.counts == {"PutRecords": 80, "DescribeStreamSummary": 40}
        assert sum(failed for _, failed in results) == sum(proxy.throttled.values()) > 0
        assert proxy.forwarded == sum(ok for ok, _ in results)


def test_stop_ends_kept_alive_connections(moto_url: str) -> None:
    with ThrottlingProxy(moto_url, {}) as proxy:
        kinesis = _client("kinesis", proxy.url, _NO_RETRIES)
        kinesis.list_streams()
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        kinesis.list_streams()


def test_malformed_chunked_body_answers_400(moto_url: str) -> None:
    with ThrottlingProxy(moto_url, {}) as proxy, socket.create_connection(
            ("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(b"PUT /bucket/key HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"\r\nnot-hex\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
        assert proxy.forwarded == 0


def test_unreachable_upstream_answers_502() -> None:
    with ThrottlingProxy(f"http://127.0.0.1:{free_port()}", {}) as proxy:
        status, _, _ = _raw(proxy, "GET", "/bucket/key")
    assert status == 502


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ThrottlingProxy("https://example.com", {})
    with pytest.raises(ValueError):
        ThrottlingProxy("http://127.0.0.1:1", {"GetRecords": 1.5})
    with pytest.raises(RuntimeError):
        _ = ThrottlingProxy("http://127.0.0.1:1", {}).url
