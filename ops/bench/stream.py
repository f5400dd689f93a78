"""`propensity bench stream`: the streaming job's sustained throughput and freshness.

On a fresh local stack, the job runs as its own process (`propensity stream`) while a separate
producer process sends generated traffic with the real data's shape (propensity.ops.generate) into
Kinesis at a fixed rate, event times = send times. Sampled events are watched in Redis through
Feast's own online read: an event's freshness is the time from just before it was sent to
Kinesis until its session's online features reflect it (their timestamp reaches its time).

The job runs on the settings' Spark master, or on the one given: `local-cluster[N,C,MB]` is
Spark's standalone topology on one machine (a driver and N executor JVMs of C cores, the
split of a cluster). The job's CPU is counted by role (propensity.ops.bench.cpu) from the end of
the warm-up until the last sample is readable: the driver's seconds per 10,000 events show
whether the driver is in the data path. With a profile folder, the same window is also
profiled (propensity.ops.bench.profile: py-spy over the Python processes, a flight recording in
each JVM) and the summary printed after the figures.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from propensity import aws
from propensity import features as F
from propensity.kinesis import KinesisWriter, ShardMap, list_shards
from propensity.ops.bench.cpu import DRIVER, EXECUTORS, JIT, KINDS, CpuTrace
from propensity.ops.bench.profile import JobProfiler
from propensity.ops.generate import TrafficModel
from propensity.ops.live_demo import start_stream_job, stop_stream_job, wait_for_first_batch
from propensity.ops.replay import SentEvent, send_events
from propensity.ops.stack import LocalStack
from propensity.settings import Settings

SAMPLES_PER_S = 200
_POLL_S = 0.05


@dataclass
class StreamBenchResult:
    rate: float
    duration_s: float
    shape: str
    events_per_record: int
    master: str = ""
    sent: int = 0
    send_s: float = 0.0
    processed_s: float = 0.0  # from the first send until the last sample was readable
    warmup_s: float = 15.0  # samples sent earlier are left out of freshness (JIT, workers)
    freshness_s: list[float] = field(default_factory=list)
    unresolved: int = 0
    job_log: str = ""
    # CPU seconds from the end of the warm-up until the last sample was readable, by role
    cpu_s: dict[str, float] = field(default_factory=dict)
    measured_events: float = 0.0  # events sent after the warm-up
    measured_s: float = 0.0  # from the end of the warm-up until the last sample was readable
    profile: str = ""  # the profile's summary, when one was taken

    def cores(self, role: str) -> float:
        """The role's CPU seconds per second of the measured window."""
        return (self.cpu_s.get(role, float("nan")) / self.measured_s if self.measured_s
                else float("nan"))

    def cpu_per_10k(self, role: str) -> float:
        return (self.cpu_s.get(role, float("nan")) / self.measured_events * 10_000
                if self.measured_events else float("nan"))

    def percentile(self, q: float) -> float:
        ordered = sorted(self.freshness_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def format(self) -> str:
        return "\n".join([
            f"stream bench: generated events with the shape of {self.shape} (not real traffic),"
            f" {self.events_per_record} events per Kinesis record",
            f"  offered    {self.rate:>10,.0f} events/s for {self.duration_s:.0f} s",
            f"  sent       {self.sent:>10,} events, {self.sent / self.send_s:,.0f} events/s"
            " achieved by the producer",
            f"  processed  {self.sent / self.processed_s:>10,.0f} events/s sustained (all sent "
            f"events readable in Redis {self.processed_s:.1f} s after the first was sent)",
            f"  freshness  p50 {self.percentile(0.5):.2f} s  p95 {self.percentile(0.95):.2f} s"
            f"  p99 {self.percentile(0.99):.2f} s  max {max(self.freshness_s, default=0):.2f} s"
            f"  (Kinesis -> readable in Redis; {len(self.freshness_s):,} events sampled after a"
            f" {self.warmup_s:.0f} s warm-up, {self.unresolved} never readable)",
            f"  CPU        driver {self.cpu_per_10k(DRIVER):.2f} s ("
            + ", ".join(f"{kind} {self.cpu_per_10k(f'{DRIVER}/{kind}'):.2f}" for kind in KINDS)
            + f"; its JVM's JIT compiler {self.cpu_per_10k(f'{JIT}:{DRIVER}'):.2f}), "
            f"executors {self.cpu_per_10k(EXECUTORS):.2f} s per 10,000 events; driver "
            f"{self.cores(DRIVER):.2f} cores, executors {self.cores(EXECUTORS):.2f} cores busy "
            f"(Spark master {self.master}; {self.measured_events:,.0f} events in the "
            f"{self.measured_s:.0f} s after the warm-up)",
            f"  job log    {self.job_log}",
            *([self.profile] if self.profile else []),
        ])

    def row(self) -> str:
        """One line of the scale-out table (format_table)."""
        return (f"| `{self.master}` | {self.rate:,.0f} | {self.sent / self.processed_s:,.0f} | "
                f"{self.percentile(0.5):.2f} / {self.percentile(0.95):.2f} / "
                f"{self.percentile(0.99):.2f} s | {self.cpu_per_10k(DRIVER):.2f} s | "
                f"{self.cpu_per_10k(EXECUTORS):.2f} s |")


def format_table(results: list[StreamBenchResult]) -> str:
    return "\n".join([
        "| Spark master | Offered events/s | Sustained events/s | Freshness p50 / p95 / p99 | "
        "Driver CPU per 10k events | Executors' CPU per 10k events |",
        "| --- | --- | --- | --- | --- | --- |", *(r.row() for r in results)])


def run_stream_bench(base: Settings, rate: float, duration_s: float, shape: Path,
                     events_per_record: int = 10, trigger_s: float = 1.0,
                     warmup_s: float = 15.0, master: str = "",
                     profile_dir: Path | None = None) -> StreamBenchResult:
    master = master or base.spark_master
    result = StreamBenchResult(rate, duration_s, shape.name, events_per_record, master,
                               warmup_s=warmup_s)
    stack = LocalStack(base.home / "bench-stream")
    stack.down()
    settings = stack.up().model_copy(update={"spark_master": master})
    _remove(Path(settings.feast_registry).parent)  # the stack's new stream has a new checkpoint
    log = stack.home / "stream.log"
    result.job_log = str(log)
    job = start_stream_job(settings, log, trigger_s=trigger_s, starting_position="LATEST")
    cpu = CpuTrace(job.pid).start()
    profiler = JobProfiler(job.pid, profile_dir) if profile_dir else None
    profiling = threading.Timer(warmup_s + 1.0, profiler.start) if profiler else None
    try:
        wait_for_first_batch(job, log, timeout_s=300)
        if profiling:  # over the measured window: from the end of the warm-up
            profiling.start()
        samples = multiprocessing.get_context("spawn").Queue()
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_generated,
            args=(settings, str(shape), rate, duration_s, events_per_record, samples))
        producer.start()
        started = _probe(settings, samples, producer, result)
        producer.join()
    finally:
        cpu.stop()
        if profiler and profiling:
            profiling.cancel()
            profiling.join()
            profiler.stop()
        stop_stream_job(job)
        stack.down()
    if profiler:
        result.profile = profiler.summary()
    measured_from, measured_to = started + warmup_s, started + result.processed_s
    result.measured_events = result.sent * max(0.0, 1 - warmup_s / result.send_s)
    result.measured_s = max(0.0, measured_to - measured_from)
    result.cpu_s = {role: cpu.used(role, measured_from, measured_to)
                    for role in (DRIVER, EXECUTORS, *(f"{DRIVER}/{kind}" for kind in KINDS),
                                 f"{JIT}:{DRIVER}", f"{JIT}:{EXECUTORS}")}
    return result


def produce_generated(settings: Settings, shape: str, rate: float, duration_s: float,
             events_per_record: int, samples: Any) -> None:
    """Sends generated traffic (event times = send times) at `rate` for `duration_s`; puts
    ("start", epoch s), lists of sampled (session, event epoch s, send epoch s) and at the
    end ("done", events sent, seconds) on the `samples` queue. Runs in a process of its own."""
    model = TrafficModel.from_file(shape)
    kinesis = aws.client("kinesis", settings)
    every = max(1, int(rate / SAMPLES_PER_S))
    counter = 0

    def sample(sent: list[SentEvent], sending_at: float) -> None:
        nonlocal counter
        picked = [(e.key, e.epoch_s, sending_at) for e in sent[(-counter) % every::every]]
        counter += len(sent)
        if picked:
            samples.put(picked)

    first_event_s = time.time() + 1.0
    samples.put(("start", first_event_s))
    summary = send_events(model.frames(first_event_s, rate, duration_s),
                          KinesisWriter(kinesis, settings.kinesis_stream),
                          ShardMap(list_shards(kinesis, settings.kinesis_stream)), speed=1.0,
                          events_per_record=events_per_record, progress=False, on_sent=sample)
    samples.put(("done", summary.sent, summary.seconds))


def _probe(settings: Settings, samples: Any, producer: Any, result: StreamBenchResult,
           drain_timeout_s: float = 120) -> float:
    """Watch sampled events until each is readable in Redis (or the drain times out);
    returns the epoch time the producer started sending at."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    from propensity import feature_repo
    from propensity.feature_repo import definitions

    config = feature_repo.repo_config(settings)
    view = definitions.feature_view(settings, F.SESSION_VIEW)
    online = RedisOnlineStore()
    pending: list[tuple[str, float, float]] = []
    done_at: float | None = None
    started = last_resolved = time.time()
    while True:
        try:
            while True:
                item = samples.get_nowait()
                if item[0] == "start":
                    started = last_resolved = item[1]
                elif item[0] == "done":
                    result.sent, result.send_s = item[1], item[2]
                    done_at = time.monotonic()
                else:
                    pending.extend(item)
        except queue.Empty:
            pass
        if pending:
            batch = pending[:2000]
            keys = [EntityKey(join_keys=[F.SESSION_ID], entity_values=[Value(string_val=s)])
                    for s, _, _ in batch]
            read = online.online_read(config, view, keys, ["event_count"])
            now = time.time()
            resolved = {i for i, (ts, _) in enumerate(read)
                        if ts is not None and ts.timestamp() >= batch[i][1] - 1e-6}
            result.freshness_s.extend(now - batch[i][2] for i in resolved
                                      if batch[i][2] >= started + result.warmup_s)
            if resolved:
                last_resolved = now
            pending = [p for i, p in enumerate(batch) if i not in resolved] + pending[2000:]
        if done_at is not None and (not pending or
                                    time.monotonic() - done_at > drain_timeout_s):
            break
        if done_at is None and not producer.is_alive() and samples.empty():
            raise RuntimeError("the producer stopped without finishing")
        time.sleep(_POLL_S)
    result.unresolved = len(pending)
    result.processed_s = last_resolved - started
    return started


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)

