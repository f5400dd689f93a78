"""The benchmarks' load generator (ops/bench/load.py) against a tiny HTTP server of the test's
own: what it times is the server's answers on warm connections, not their opening."""

from __future__ import annotations

import asyncio
import collections

from propensity.ops.bench.load import run_load

FIRST_REQUEST_DELAY_S = 0.3


async def _server(requests: collections.Counter) -> asyncio.Server:
    """A keep-alive HTTP/1.1 server on a free port that answers each connection's first request
    FIRST_REQUEST_DELAY_S late (as a server still accepting a burst of connections does) and
    every later one at once; `requests` counts them by connection."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = id(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if not requests[connection]:
                    await asyncio.sleep(FIRST_REQUEST_DELAY_S)
                requests[connection] += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_each_connection_is_warmed_by_one_untimed_request_before_the_clock_starts() -> None:
    requests: collections.Counter = collections.Counter()

    async def scenario():
        async with await _server(requests) as server:
            port = server.sockets[0].getsockname()[1]
            return await run_load(f"http://127.0.0.1:{port}/v1/propensity", [b'{"a": 1}'],
                                  rps=100, duration_s=0.5, connections=8)

    result = asyncio.run(scenario())
    assert (result.sent, result.ok, result.errors) == (50, 50, {})
    assert len(requests) == 8 and sum(requests.values()) == 50 + 8  # one warm-up each
    # Without the warm-up the first request on each connection would be timed with the
    # server's delay in it.
    assert max(result.latencies_ms) < FIRST_REQUEST_DELAY_S * 1000 / 2
