"""The chaos suite's soak and its memory forensics (ops/bench/chaos.py): the streaming job and
the scorer under moderate traffic, their memory sampled by part (driver, JVM, Python workers,
scorer) and judged once settled; the JVM's live heap after full collections."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import queue
import random
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow.compute as pc

from propensity.ops.bench.chaos_scorer import (
    RECOVERED_SHED_SHARE,
)
from propensity.ops.bench.chaos_stream import (
    lake_event_ids,
    start_job,
)
from propensity.ops.bench.cpu import JVM, PYTHON_MAIN, PYTHON_WORKERS, kind_of
from propensity.ops.bench.stream import produce_generated
from propensity.ops.bench.verdicts import (
    Outcome,
)
from propensity.ops.live_demo import stop_stream_job
from propensity.ops.testing import (
    SCORER_MODULE,
    free_port,
    isolated,
    running_scorer,
)
from propensity.settings import Settings

SOAK_SESSION_TIMEOUT_S = 120
# Largest growth of settled memory (middle of the run to its end) that passes.
SOAK_MAX_GROWTH_PCT = 5.0
# The soak's memory is settled over this window of the run (past start-up and the first
# sessions' expiry) and judged against the run from FINAL_FROM on.
SETTLED_WINDOW = (0.40, 0.55)
FINAL_FROM = 0.85
MEMORY_EVERY_S = 5.0
SOAK_ANSWER_TIMEOUT_S = 10.0


@dataclass
class MemoryTrace:
    """Proportional set size (MB) of the scorer and of the job's process tree (driver, JVM,
    Python workers: PSS shares pages between the forks fairly), every MEMORY_EVERY_S; the
    job's also by part (JOB_PARTS) with its number of Python workers, to tell which moved."""
    seconds: list[float] = field(default_factory=list)
    scorer_mb: list[float] = field(default_factory=list)
    job_parts_mb: list[dict[str, float]] = field(default_factory=list)
    job_workers: list[int] = field(default_factory=list)

    def sample(self, at_s: float, scorer: psutil.Process, job: psutil.Process) -> None:
        self.seconds.append(at_s)
        self.scorer_mb.append(_pss_mb([scorer]))
        parts = dict.fromkeys(JOB_PARTS, 0.0)
        workers = 0
        for process in [job, *job.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                part = _job_part(process)
                parts[part] += _pss_mb([process])
                workers += part == "python workers"
        self.job_parts_mb.append(parts)
        self.job_workers.append(workers)

    @property
    def job_mb(self) -> list[float]:
        return [sum(parts.values()) for parts in self.job_parts_mb]

    @staticmethod
    def growth(values: list[float], hidden_mb: float = 0.0) -> tuple[float, float]:
        """(settled MB, growth %): the median over SETTLED_WINDOW against the median from
        FINAL_FROM on, plus `hidden_mb` of growth the trace cannot see (inside the JVM's
        fixed heap)."""
        n = len(values)
        start, end = int(SETTLED_WINDOW[0] * n), int(SETTLED_WINDOW[1] * n)
        settled = statistics.median(values[start:max(end, start + 1)])
        final = statistics.median(values[int(FINAL_FROM * n):])
        return settled, 100 * (final - settled + hidden_mb) / settled

    def slope_mb_per_min(self, values: list[float]) -> float:
        """Least-squares trend of the run's second half, in MB per minute."""
        half = len(values) // 2
        if len(values) - half < 2:
            return float("nan")
        return statistics.linear_regression(self.seconds[half:], values[half:]).slope * 60

    def summary(self, values: list[float], hidden_mb: float = 0.0) -> tuple[str, float]:
        settled, growth = self.growth(values, hidden_mb)
        return (f"{settled:.0f} -> {values[-1]:.0f} ({growth:+.1f}%, "
                f"{self.slope_mb_per_min(values):+.1f} MB/min late)", growth)


def _pss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_full_info().pss
    return total / 2**20


# The streaming job's parts, by the kind propensity.ops.bench.cpu gives a process (CSV columns).
_PART_OF_KIND = {PYTHON_MAIN: "driver", JVM: "jvm", PYTHON_WORKERS: "python workers"}
JOB_PARTS = tuple(_PART_OF_KIND.values())
# When the soak measures the JVM's live heap (a full collection each), as fractions of the run:
# four times in SETTLED_WINDOW, three from FINAL_FROM on.
LIVE_HEAP_AT = (0.40, 0.45, 0.50, 0.55, 0.85, 0.90, 0.95)


def jvm_live_heap_mb(pid: int) -> float | None:
    """The JVM's live heap: its old generation right after a full collection (`jcmd GC.run`,
    a pause of a few hundred ms), in MB; None without the JDK's jcmd. The heap's size in the
    process's memory says nothing of a leak in it once the heap is fixed and touched."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return None
    subprocess.run([jcmd, str(pid), "GC.run"], check=True, capture_output=True, timeout=60)
    info = subprocess.run([jcmd, str(pid), "GC.heap_info"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    used = re.search(r"used (\d+)K", info)
    young = re.search(r"(\d+) young \((\d+)K\)", info)
    if used is None or young is None:
        raise RuntimeError(f"unexpected jcmd GC.heap_info output: {info!r}")
    return (int(used.group(1)) - int(young.group(2))) / 1024


def _jvm_of(job: psutil.Process) -> psutil.Process:
    for process in job.children(recursive=True):
        if _job_part(process) == "jvm":
            return process
    raise RuntimeError(f"the streaming job (pid {job.pid}) has no JVM")


def _job_part(process: psutil.Process) -> str:
    """Which part of the streaming job a process of its tree is."""
    return _PART_OF_KIND[kind_of(process.cmdline())]


def _child_serving_on(port: int) -> psutil.Process:
    for child in psutil.Process().children():
        if SCORER_MODULE in child.cmdline() and str(port) in child.cmdline():
            return child
    raise RuntimeError(f"no scorer process of ours serves port {port}")


async def _live_requests(url: str, samples: Any, seconds: float, rate: float,
                         on_tick: Any, producer_said: list
                         ) -> list[tuple[int, float, str | None]]:
    """Scoring requests at `rate` for sessions the producer has just sent events of (from its
    samples queue; its other messages go to `producer_said`): (status, latency ms, the
    client's error when there was no answer) each.
    `on_tick(elapsed s)` runs between requests."""
    recent: collections.deque[str] = collections.deque(maxlen=5000)
    rng = random.Random(0)
    out: list[tuple[int, float, str | None]] = []
    # The soak judges that every request is answered, not how fast (the latency scenarios
    # judge that, alone): the memory samples between requests stall this loop for a moment,
    # and beside make test's other lane a request here once went past a 2 s timeout.
    async with httpx.AsyncClient(timeout=SOAK_ANSWER_TIMEOUT_S) as client:
        async def one(session: str) -> None:
            started = time.monotonic()
            status, error = 0, None
            try:
                status = (await client.post(f"{url}/v1/propensity",
                                            json={"session_id": session})).status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            out.append((status, (time.monotonic() - started) * 1000, error))

        tasks = []
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            with contextlib.suppress(queue.Empty):
                while True:
                    item = samples.get_nowait()
                    if isinstance(item, list):
                        recent.extend(session for session, _, _ in item)
                    else:
                        producer_said.append(item)
            on_tick(elapsed)
            if recent:
                tasks.append(asyncio.create_task(one(rng.choice(recent))))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return out


def soak(settings: Settings, shape: Path, folder: Path, seconds: float, event_rate: float,
         request_rate: float, log: Path, judge_memory: bool = True) -> Outcome:
    """The streaming job and the scorer for `seconds` at a moderate rate (generated traffic
    with the shape of `shape`, event times = now): memory of both sampled (the trace goes
    next to `log` as CSV) and, when `judge_memory`, settled; every event in the lake once,
    every request answered (at most RECOVERED_SHED_SHARE shed with 429). (A run of a minute
    or two is inside the warm-up of the JVM's heap and of the session state, whose sessions
    close after SOAK_SESSION_TIMEOUT_S: its memory figures are shown, not judged.)"""
    local = isolated(settings, folder / "soak").model_copy(update={
        "session_timeout_s": SOAK_SESSION_TIMEOUT_S, "watermark_delay_s": 30,
        "models_uri": settings.models_uri})  # the scorer serves the registered model
    spawn = multiprocessing.get_context("spawn")
    samples = spawn.Queue()
    producer = spawn.Process(target=produce_generated,
                             args=(local, str(shape), event_rate, seconds, 10, samples))
    trace = MemoryTrace()
    job = start_job(local, log)
    try:
        port = free_port()
        with running_scorer(local, port) as url:
            scorer = _child_serving_on(port)
            job_process = psutil.Process(job.pid)

            def on_tick(elapsed: float) -> None:
                if not trace.seconds or elapsed - trace.seconds[-1] >= MEMORY_EVERY_S:
                    trace.sample(elapsed, scorer, job_process)

            live_heap: list[tuple[float, float | None]] = []
            heap_probe = threading.Thread(target=_probe_live_heap, daemon=True, args=(
                _jvm_of(job_process).pid, seconds, live_heap))
            producer.start()
            heap_probe.start()
            said: list = []
            answers = asyncio.run(_live_requests(url, samples, seconds, request_rate,
                                                 on_tick, said))
            heap_probe.join(timeout=120)
        producer.join(timeout=120)
        if producer.exitcode != 0:
            raise RuntimeError(f"the traffic producer failed (exit code {producer.exitcode})")
        sent = _sent_by(said, samples)
        in_lake = _lake_count_when_caught_up(local, sent)
        alive = job.poll() is None
    finally:
        if producer.is_alive():
            producer.kill()
        stop_stream_job(job)
    scorer_memory, scorer_growth = trace.summary(trace.scorer_mb)
    # The job's heap is fixed and touched (its whole size is in the trace); what it holds
    # counts instead, by its floor.
    floors = live_heap_floors(live_heap)
    job_memory, job_growth = trace.summary(trace.job_mb,
                                           floors[1] - floors[0] if floors else 0.0)
    # A steady load may be shed for a moment (429), when a stall of the shared machine
    # brings its requests in a burst (as in the overload's recovery), never failed.
    shed = sum(status == 429 for status, _, _ in answers)
    errors = collections.Counter(error or str(status) for status, _, error in answers
                                 if status not in (200, 429))
    latencies = sorted(ms for _, ms, _ in answers)
    figures = {
        "seconds": seconds, "events sent (generated)": sent, "lost": sent - in_lake,
        "requests": len(answers), "shed (429)": shed, "errors": sum(errors.values()),
        "p99 ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "scorer MB": scorer_memory, "job MB": job_memory,
        "job live heap MB": (f"{floors[0]:.0f} -> {floors[1]:.0f} (least of "
                             + ", ".join(f"{mb:.0f}" for _, mb in live_heap) + ")")
                            if floors else "not measured (no jcmd)",
    }
    if errors:
        figures["errors by kind"] = dict(errors)
    _write_trace(trace, log.with_suffix(".memory.csv"))
    settled = scorer_growth < SOAK_MAX_GROWTH_PCT and job_growth < SOAK_MAX_GROWTH_PCT
    figures["memory judged"] = judge_memory
    return Outcome("soak", alive and sent > 0 and in_lake == sent and not errors and
                   shed <= RECOVERED_SHED_SHARE * len(answers) and (settled or not judge_memory),
                   figures)


def _probe_live_heap(pid: int, seconds: float, out: list[tuple[float, float | None]]) -> None:
    """The JVM's live heap at each of LIVE_HEAP_AT of `seconds` from now, appended to `out`
    with its fraction."""
    start = time.monotonic()
    for at in LIVE_HEAP_AT:
        time.sleep(max(0.0, at * seconds - (time.monotonic() - start)))
        try:
            out.append((at, jvm_live_heap_mb(pid)))
        except (subprocess.SubprocessError, OSError) as error:
            print(f"      live heap not measured: {error}", flush=True)
            out.append((at, None))


def live_heap_floors(probes: list[tuple[float, float | None]]) -> tuple[float, float] | None:
    """The least live heap (MB) of the probes (fraction of the run, MB) in the settled window
    and in the final one (from FINAL_FROM): what the heap keeps whatever batch is in flight (single
    probes swung 96 -> 179 -> 148 MB with the batch each caught). None when a probe is
    missing (no jcmd)."""
    if not probes or any(mb is None for _, mb in probes):
        return None
    settled = [mb for at, mb in probes if at < FINAL_FROM]
    final = [mb for at, mb in probes if at >= FINAL_FROM]
    return (min(settled), min(final)) if settled and final else None


def _sent_by(said: list, samples: Any) -> int:
    """The producer's count of events sent, from its final ("done", sent, seconds) message
    (already heard, or still in the queue)."""
    while True:
        item = said.pop(0) if said else samples.get(timeout=30)
        if isinstance(item, tuple) and item[0] == "done":
            return item[1]


def _lake_count_when_caught_up(settings: Settings, sent: int, timeout_s: float = 120) -> int:
    """Distinct events in the lake once it holds `sent` (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(10)
        count = len(pc.unique(lake_event_ids(settings)))
        if count >= sent or time.monotonic() > deadline:
            return count


def _write_trace(trace: MemoryTrace, path: Path) -> None:
    header = ",".join(["seconds", "scorer_pss_mb", "job_pss_mb",
                       *(f"job_{part.replace(' ', '_')}_pss_mb" for part in JOB_PARTS),
                       "job_worker_processes"])
    rows = zip(trace.seconds, trace.scorer_mb, trace.job_mb, trace.job_parts_mb,
               trace.job_workers, strict=True)
    path.write_text(header + "\n" + "".join(
        ",".join([f"{t:.1f}", f"{a:.1f}", f"{b:.1f}",
                  *(f"{by_part[part]:.1f}" for part in JOB_PARTS), str(workers)]) + "\n"
        for t, a, b, by_part, workers in rows))
