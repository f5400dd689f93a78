"""An open-loop HTTP load generator, run as a process of its own:

    python -m propensity.ops.bench.load URL --rps R --duration S --bodies FILE [--connections C]
    python -m propensity.ops.bench.load URL --closed --duration S --bodies FILE [--connections C]

Request i is due at start + i / R whatever happened before; its latency runs from that due
time to the end of its response, so a server that falls behind shows it (no coordinated
omission); one unanswered 5 s after its due time counts as an error (the run stays
bounded). Requests go over C keep-alive HTTP/1.1 connections (raw asyncio streams on uvloop:
the generator must cost the 2-core machine little), each warmed by one untimed request before
the clock starts (a connection's first request waits for the server to accept it; a client
pool's steady state is warm). `--bodies` is a JSON-lines file of request
bodies, sent in turn. Prints one JSON object: sent, ok, errors by kind, achieved rate and
latency percentiles in ms. `--closed` measures capacity instead: each connection sends its
next request as soon as the last is answered, so the rate achieved is what the server
sustains with C requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

# A request's failures on its connection (TimeoutError, from its deadline, is an OSError): the
# connection is closed and opened again by its next request.
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError, ValueError)
# The untimed warm-up (_warm): requests in flight at once, and how long each may take.
WARM_IN_FLIGHT = 4
WARM_TIMEOUT_S = 5.0


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def answered(self, status: int, since: float) -> None:
        """An answer: ok (its latency from `since`, a perf_counter time) or an error status."""
        if status == 200:
            self.ok += 1
            self.latencies_ms.append((time.perf_counter() - since) * 1000)
        else:
            self.failed(str(status))

    def failed(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        p50, p95, p99, p999 = np.percentile(lat, [50, 95, 99, 99.9])
        return {"sent": self.sent, "ok": self.ok, "errors": self.errors,
                "achieved_rps": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "p999_ms": p999,
                "max_ms": float(np.max(lat))}


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(head + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        lowered = headers.lower()
        if b"transfer-encoding: chunked" in lowered:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            start = lowered.find(b"content-length:")
            length = int(lowered[start + 15:lowered.find(b"\r\n", start)]) if start >= 0 else 0
            await self.reader.readexactly(length)
        if b"connection: close" in lowered:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url: str, bodies: list[bytes], rps: float | None, duration_s: float,
                   connections: int = 32, headers: dict[str, str] | None = None,
                   timeout_s: float = 5.0) -> LoadResult:
    parsed = urlparse(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    heads = {}
    result = LoadResult()
    pool = [Connection(parsed.hostname, parsed.port) for _ in range(connections)]
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in pool:
        idle.put_nowait(connection)

    def head(length: int) -> bytes:
        if length not in heads:
            heads[length] = (f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
                             f"Content-Type: application/json\r\n{extra}"
                             f"Content-Length: {length}\r\n\r\n").encode()
        return heads[length]

    async def one(due: float, body: bytes) -> None:
        # A request not answered within timeout_s of its due time, waiting for a connection
        # included, is an error: the run ends at most timeout_s after the last one is due.
        try:
            connection = await asyncio.wait_for(idle.get(), due + timeout_s - time.perf_counter())
        except TimeoutError:
            result.failed("TimeoutError")
            return
        try:
            result.answered(await asyncio.wait_for(connection.request(head(len(body)), body),
                                                   due + timeout_s - time.perf_counter()), due)
        except CONNECTION_ERRORS as error:
            result.failed(type(error).__name__)
            connection.close()
        finally:
            idle.put_nowait(connection)

    await _warm(pool, head(len(bodies[0])), bodies[0])
    if rps is None:
        return await _closed_loop(pool, duration_s, bodies, head, result)
    tasks = set()
    start = time.perf_counter()
    total = int(rps * duration_s)
    for i in range(total):
        due = start + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due, bodies[i % len(bodies)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        result.sent += 1
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait().close()
    return result


async def _warm(connections: list[Connection], head: bytes, body: bytes) -> None:
    """One untimed request on every connection before the clock starts, WARM_IN_FLIGHT at a
    time, as the shop's backend (and the load balancer before the scorer) has used its
    keep-alive connections before: the first request on a new connection waits for the
    server to accept it, and 256 of them at the first due times of a run at twice a hogged
    scorer's capacity were timed at up to half a second (the scorer's own histogram: none
    over 50 ms). A connection whose warm-up fails is opened again by its first request."""
    gate = asyncio.Semaphore(WARM_IN_FLIGHT)

    async def warm(connection: Connection) -> None:
        async with gate:
            try:
                await asyncio.wait_for(connection.request(head, body), WARM_TIMEOUT_S)
            except CONNECTION_ERRORS:
                connection.close()

    await asyncio.gather(*(warm(c) for c in connections))


async def _closed_loop(connections: list[Connection], duration_s: float, bodies: list[bytes],
                       head: Any, result: LoadResult) -> LoadResult:
    """Each connection sends its next request as soon as the last is answered, for
    `duration_s`: the rate achieved is what the server sustains with that many requests in
    flight (latency from each request's send)."""
    start = time.perf_counter()
    deadline = start + duration_s

    async def loop(connection: Connection, first: int) -> None:
        i = first
        while (sent := time.perf_counter()) < deadline:
            body = bodies[i % len(bodies)]
            i += len(connections)
            result.sent += 1
            try:
                result.answered(await connection.request(head(len(body)), body), sent)
            except CONNECTION_ERRORS as error:
                result.failed(type(error).__name__)
                connection.close()
        connection.close()

    await asyncio.gather(*(loop(c, i) for i, c in enumerate(connections)))
    result.elapsed_s = time.perf_counter() - start
    return result


def run_as_process(url: str, bodies: Path, rps: float | None, duration_s: float,
                   connections: int = 32, cores: Collection[int] | None = None) -> dict:
    """This generator in a process of its own (so it does not share the caller's GIL), on
    `cores` if given; returns its summary. `rps` None: closed loop (each connection sends
    again as soon as it is answered)."""
    import subprocess

    from propensity.ops.testing import on_cores

    rate = ["--closed"] if rps is None else ["--rps", str(rps)]
    done = subprocess.run(
        [sys.executable, "-m", "propensity.ops.bench.load", url, *rate, "--duration",
         str(duration_s), "--bodies", str(bodies), "--connections", str(connections)],
        capture_output=True, text=True, check=True, timeout=duration_s + 120,
        preexec_fn=on_cores(cores))
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m propensity.ops.bench.load")
    parser.add_argument("url")
    rate = parser.add_mutually_exclusive_group(required=True)
    rate.add_argument("--rps", type=float, help="requests per second, open loop")
    rate.add_argument("--closed", action="store_true",
                      help="closed loop: each connection sends again once answered")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON lines")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    args = parser.parse_args(argv)
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
    headers = dict(h.split(":", 1) for h in args.header)
    import uvloop

    result = uvloop.run(run_load(args.url, bodies, None if args.closed else args.rps,
                                 args.duration,
                                 args.connections, headers))
    json.dump(result.summary(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
