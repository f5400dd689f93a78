"""`ThrottlingProxy`: fault injection for tests, an HTTP proxy in front of a moto server that
throttles chosen Kinesis API calls the way real Kinesis does.

Point a client's AWS endpoint (``AWS_ENDPOINT_URL``, boto3's ``endpoint_url``, pyarrow's
``endpoint_override``) at `ThrottlingProxy.url` instead of at moto. Every request is passed
through unchanged (method, path and query, headers including ``Host``, body), except Kinesis
calls whose operation is listed in ``throttle``: each of those is rejected with the given
probability, with the HTTP 400 answer Kinesis gives when a limit is hit:

- ``ProvisionedThroughputExceededException`` for the data-plane calls (``GetRecords``,
  ``PutRecords``, ``PutRecord``), whose limits are per shard;
- ``LimitExceededException`` for every other (control-plane) call, such as
  ``GetShardIterator``, ``ListShards`` or ``DescribeStreamSummary``.

A rejected call never reaches moto. The answer is encoded in the protocol of the request
(JSON 1.1, which botocore uses, or CBOR 1.1, which the Java SDK uses), so the client raises
its ordinary throttling error (botocore: a ``ClientError`` with that ``Error.Code``), and its
retry policy treats it as throttling. The choice is deterministic: one ``random.Random`` per
operation, seeded from ``seed`` and the operation's name.

The proxy is a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a daemon thread; each
client connection gets a persistent connection of its own to the upstream server. Chunked
request bodies are de-chunked and forwarded with a ``Content-Length``; bodies in
``aws-chunked`` content encoding are forwarded as they are. Responses are buffered whole.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

_TARGET_PREFIX = "Kinesis_20131202."
_DATA_PLANE = frozenset({"GetRecords", "PutRecords", "PutRecord"})
_THROUGHPUT = "ProvisionedThroughputExceededException"
_LIMIT = "LimitExceededException"
_ACCOUNT = "123456789012"
_JSON = "application/x-amz-json-1.1"
_CBOR = "application/x-amz-cbor-1.1"
# Hop-by-hop headers (RFC 9110 7.6.1), which describe one connection and are not forwarded.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError)


def error_code(operation: str) -> str:
    """The error Kinesis answers `operation` with when its limit is exceeded."""
    return _THROUGHPUT if operation in _DATA_PLANE else _LIMIT


class ThrottlingProxy:
    """An HTTP proxy on 127.0.0.1 in front of `upstream` (e.g. moto's ``http://127.0.0.1:PORT``)
    that rejects the fraction ``throttle[operation]`` of each listed Kinesis operation's calls.

    ``counts`` holds the Kinesis calls seen per operation (throttled or not), ``throttled`` the
    calls rejected per operation, and ``forwarded`` the requests of any kind passed upstream.
    Use it as a context manager, or call `start` and `stop`."""

    def __init__(self, upstream: str, throttle: dict[str, float] | None = None,
                 seed: int = 0, timeout_s: float = 60) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, not {upstream!r}")
        throttle = dict(throttle or {})
        for operation, fraction in throttle.items():
            if not 0 <= fraction <= 1:
                raise ValueError(f"throttle fraction for {operation} must be in [0, 1]")
        self.upstream = upstream
        self.throttle = throttle
        self.seed = seed
        self.timeout_s = timeout_s
        self.counts: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self.forwarded = 0
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._random: dict[str, random.Random] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThrottlingProxy:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"throttling-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:  # kept-alive clients: their handlers end now
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ThrottlingProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.throttled.clear()
            self.forwarded = 0

    def _decide(self, operation: str) -> bool:
        """Counts a call of `operation`; True when it is to be rejected."""
        with self._lock:
            self.counts[operation] = self.counts.get(operation, 0) + 1
            fraction = self.throttle.get(operation, 0.0)
            if fraction <= 0:
                return False
            rng = self._random.get(operation)
            if rng is None:
                rng = self._random[operation] = random.Random(f"{self.seed}:{operation}")
            if rng.random() >= fraction:
                return False
            self.throttled[operation] = self.throttled.get(operation, 0) + 1
            return True

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _count_forwarded(self) -> None:
        with self._lock:
            self.forwarded += 1

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._upstream_host, self._upstream_port,
                                          timeout=self.timeout_s)


def _handler_class(proxy: ThrottlingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with clients
    disable_nagle_algorithm = True  # headers and body are separate writes: no delayed-ACK stall
    proxy: ThrottlingProxy
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.proxy._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.proxy._closed(self.connection)
            self._reset_upstream()

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        target = self.headers.get("X-Amz-Target", "")
        if self.command == "POST" and target.startswith(_TARGET_PREFIX):
            operation = target[len(_TARGET_PREFIX):]
            if self.proxy._decide(operation):
                self._reject(operation, body)
                return
        self._forward(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _read_body(self) -> bytes | None:
        """The request's body, de-chunked; None (after answering 400) when it cannot be read."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size > 0 else b""
            if len(body) < size:
                raise ValueError("the client sent less than its Content-Length")
            return body
        except ValueError as e:
            self.close_connection = True
            self.send_error(400, f"unreadable request body: {e}")
            return None

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ValueError("the client closed the connection mid-body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields, dropped
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ValueError("the client closed the connection mid-chunk")
            chunks.append(chunk)
            self.rfile.readline(65537)  # the CRLF after the chunk

    def _forward(self, body: bytes) -> None:
        connection_tokens = {token.strip().lower()
                             for token in self.headers.get("Connection", "").split(",")}
        headers = [(name, value) for name, value in self.headers.items()
                   if name.lower() not in _HOP_BY_HOP and name.lower() not in connection_tokens
                   and name.lower() not in ("content-length", "expect")]
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if body or chunked or "Content-Length" in self.headers:
            headers.append(("Content-Length", str(len(body))))
        try:
            status, reason, response_headers, response_body = self._exchange(headers, body)
        except (OSError, http.client.HTTPException) as e:
            self._reset_upstream()
            self.close_connection = True
            self.send_error(502, f"upstream {self.proxy.upstream} failed: {e}")
            return
        self.proxy._count_forwarded()
        self.send_response_only(status, reason)
        has_length = False
        for name, value in response_headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue
            if lower == "content-length":
                if self.command != "HEAD":
                    continue  # set from the body below
                has_length = True
            self.send_header(name, value)
        if self.command != "HEAD" and status not in (204, 304) and status >= 200:
            self.send_header("Content-Length", str(len(response_body)))
        elif self.command == "HEAD" and not has_length:
            self.send_header("Content-Length", "0")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and response_body:
            self.wfile.write(response_body)
        self.wfile.flush()

    def _exchange(self, headers: list[tuple[str, str]], body: bytes
                  ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Sends the request upstream on this connection's persistent upstream connection,
        once more on a new one if the kept one turns out to have been closed."""
        for attempt in (1, 2):
            reused = self._upstream is not None
            if self._upstream is None:
                self._upstream = self.proxy._connect()
            upstream = self._upstream
            try:
                upstream.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                for name, value in headers:
                    upstream.putheader(name, value)
                upstream.endheaders(body or None)
                response = upstream.getresponse()
                response_body = response.read()
            except _STALE:
                self._reset_upstream()
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                self._reset_upstream()
                raise
            if response.will_close:
                self._reset_upstream()
            return response.status, response.reason, response.getheaders(), response_body
        raise AssertionError("unreachable")

    def _reset_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _reject(self, operation: str, body: bytes) -> None:
        code = error_code(operation)
        message = _message(code, body)
        content_type = self.headers.get("Content-Type", _JSON).split(";")[0].strip().lower()
        if content_type == _CBOR:
            payload = _cbor_map({"__type": code, "message": message})
        else:
            content_type = _JSON
            payload = json.dumps({"__type": code, "message": message}).encode()
        self.send_response_only(400, "Bad Request")
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("x-amzn-ErrorType", f"{code}:")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


def _message(code: str, body: bytes) -> str:
    stream = "unknown"
    try:
        request = json.loads(body) if body else {}
        if isinstance(request, dict):
            stream = str(request.get("StreamName") or request.get("StreamARN")
                         or request.get("ConsumerARN") or stream)
    except ValueError:
        pass  # CBOR or otherwise not JSON: the message names no stream
    if code == _THROUGHPUT:
        return f"Rate exceeded for shard in stream {stream} under account {_ACCOUNT}."
    return f"Rate exceeded for stream {stream} under account {_ACCOUNT}."


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | extra]) + value.to_bytes(size, "big")
    raise ValueError("value too large for CBOR")


def _cbor_map(fields: dict[str, str]) -> bytes:
    """A CBOR map of text strings to text strings (all an error answer needs)."""
    out = bytearray(_cbor_head(5, len(fields)))
    for key, value in fields.items():
        for text in (key, value):
            data = text.encode()
            out += _cbor_head(3, len(data)) + data
    return bytes(out)
