"""The live part of `propensity demo`: the streaming job and the scorer running, the bundled
sample replayed at a chosen speed, and a small "shop backend" asking for the propensity of
sessions as they happen; a live view while it runs, then a summary and a report with plots.

Pieces: `Shop` (the backend: asks the scorer about recently active sessions), `Watch` (what
the view shows: replay rate, the streaming job's freshness from its log, scorer latency, top
sessions), `report` (markdown and PNGs).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil

from propensity.ops.replay import SentEvent
from propensity.settings import Settings

FRESHNESS = re.compile(r"freshness p50 ([\d.]+) s max ([\d.]+) s")


@dataclass
class Answer:
    at: float  # seconds since the demo's start
    session_id: str
    propensity: float
    latency_ms: float
    degraded: bool
    variant: str


@dataclass
class Watch:
    """Everything the live view and the report read; filled by the replay callback, the shop
    and the streaming job's log."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    sent_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    # session -> the scoring request the shop makes for it: the shopper and the product of
    # its latest event (the shop's backend knows both), most recently active last
    active: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    answers: list[Answer] = field(default_factory=list)
    errors: int = 0
    data_epoch_s: float = 0.0  # event time reached by the replay
    freshness_p50_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_sent(self, events: list[SentEvent], at: float) -> None:
        with self.lock:
            self.sent += len(events)
            self.sent_times.append((time.monotonic(), len(events)))
            for event in events:
                self.data_epoch_s = max(self.data_epoch_s, event.epoch_s)
                fields = orjson.loads(event.data)
                self.active.pop(event.key, None)
                self.active[event.key] = {"session_id": event.key,
                                          "user_id": fields["user_id"],
                                          "product_id": fields["product_id"]}
            while len(self.active) > 2000:
                self.active.popitem(last=False)

    def recent_requests(self, n: int) -> list[dict]:
        """The scoring requests of the `n` sessions active most recently, scored at the
        sample's clock: the replayed events keep their recorded times, so the request-time
        features (seconds since the product's last view, days since the last purchase) are
        measured on the same clock as the events, as they are in a live shop."""
        with self.lock:
            as_of = {"as_of": self.data_epoch_s} if self.data_epoch_s else {}
            return [{**request, **as_of} for request in list(self.active.values())[-n:]]

    def events_per_s(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        with self.lock:
            recent = sum(n for t, n in self.sent_times if now - t <= window_s)
        return recent / window_s

    def data_time(self) -> str:
        if not self.data_epoch_s:
            return "its start"
        return datetime.fromtimestamp(self.data_epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def read_job_log(self, log: Path) -> None:
        text = log.read_text(errors="replace") if log.exists() else ""
        self.freshness_p50_s = [float(m.group(1)) for m in FRESHNESS.finditer(text)]

    def view(self) -> str:
        elapsed = time.monotonic() - self.started
        latencies = [a.latency_ms for a in self.answers[-500:]]
        lat = (f"p50 {np.percentile(latencies, 50):.1f} ms, p99 "
               f"{np.percentile(latencies, 99):.1f} ms" if latencies else "waiting")
        fresh = (f"{self.freshness_p50_s[-1]:.2f} s (p50 of the last batch)"
                 if self.freshness_p50_s else "waiting for the first batch")
        latest: dict[str, Answer] = {}
        for answer in self.answers[-2000:]:
            latest[answer.session_id] = answer
        top = sorted(latest.values(), key=lambda a: -a.propensity)[:5]
        lines = [f"--- {elapsed:5.0f} s -----------------------------------------------------",
                 f"events replayed   {self.sent:>8,}   ({self.events_per_s():,.0f}/s now; "
                 f"the sample's clock at {self.data_time()})",
                 f"feature freshness {fresh}",
                 f"scorer            {len(self.answers):,} answers, {self.errors} errors, {lat}",
                 "top sessions by propensity:"]
        lines += [f"  {a.session_id}  {a.propensity:.3f}" for a in top] or ["  (none yet)"]
        return "\n".join(lines)


class Shop:
    """The shop's backend: while running, asks the scorer about the sessions active most
    recently, `rate` requests a second, in a thread with its own event loop."""

    def __init__(self, url: str, watch: Watch, rate: float = 20.0) -> None:
        self.url, self.watch, self.rate = url, watch, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        pending: set[asyncio.Task] = set()
        async with httpx.AsyncClient(timeout=1.0) as client:
            while not self._stop.is_set():
                for request in self.watch.recent_requests(3):
                    task = asyncio.create_task(self._ask(client, request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(3 / self.rate)
            await asyncio.gather(*pending)  # let the last answers land

    async def _ask(self, client: httpx.AsyncClient, request: dict) -> None:
        started = time.monotonic()
        try:
            response = await client.post(f"{self.url}/v1/propensity", json=request)
            body = response.json()
            if response.status_code != 200:
                raise ValueError(body)
            self.watch.answers.append(Answer(
                started - self.watch.started, request["session_id"], body["propensity"],
                (time.monotonic() - started) * 1000, body["degraded"], body["variant"]))
        except (httpx.HTTPError, ValueError, KeyError):
            self.watch.errors += 1


def propensities(url: str, requests: list[dict]) -> list[float]:
    """The scorer's propensities of the requests, in one batch call (at most MAX_BATCH)."""
    response = httpx.post(f"{url}/v1/propensity/batch", json={"requests": requests},
                          timeout=10)
    response.raise_for_status()
    return [result["propensity"] for result in response.json()["results"]]


def start_stream_job(settings: Settings, log: Path, *options: str, trigger_s: float = 1.0,
                     starting_position: str = "TRIM_HORIZON", append: bool = False
                     ) -> subprocess.Popen:
    """`propensity stream` (continuous, unless `options` say `--until-idle`) in a process
    group of its own; its output goes to `log` (overwritten, or appended to for a restart)."""
    with open(log, "ab" if append else "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "propensity.ops.cli", "stream", "--trigger", str(trigger_s),
             "--starting-position", starting_position, *options],
            env={**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"},
            stdout=out, stderr=out, start_new_session=True)


def wait_for_first_batch(job: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until the job has run its first batch: Spark, the query and Feast are up."""
    deadline = time.monotonic() + timeout_s
    while "batch 0:" not in log.read_text(errors="replace"):
        if job.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the streaming job did not start; see {log}")
        time.sleep(0.2)


def stop_stream_job(job: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to the job's process group (driver, JVM, Python workers), SIGKILL if it
    lingers; returns once none of the group runs, so a JVM still shutting down does not
    share the machine with what comes next."""
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while _group_alive(job.pid) and time.monotonic() < deadline + timeout_s:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
        time.sleep(0.1)


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies, already dead, do not count)."""
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if (os.getpgid(process.pid) == group
                    and process.info["status"] != psutil.STATUS_ZOMBIE):
                return True
    return False


def report(watch: Watch, folder: Path, model_version: str, sent: int, batch_effect: str,
           monitored: Any, readout: Any) -> Path:
    """report.md with propensity-over-time, latency and freshness plots, the daily batch's
    effect on the last sessions, the variant split, each variant's live quality and the A/B
    readout (the monitor's own report with the drift beside it); returns its path."""
    from matplotlib.figure import Figure

    from propensity.monitoring.report import QUALITY_HEADER, quality_cells

    folder.mkdir(parents=True, exist_ok=True)
    answers = watch.answers
    by_session: dict[str, list[Answer]] = collections.defaultdict(list)
    for answer in answers:
        by_session[answer.session_id].append(answer)
    # The sessions whose propensity changed most often while the shop watched them: the
    # most asked-about ones are those of the sample's quiet stretch, whose scores stay flat.
    followed = sorted(by_session, key=lambda s: (-len({a.propensity for a in by_session[s]}),
                                                 -len(by_session[s])))[:6]

    figure = Figure(figsize=(7, 4))
    axis = figure.add_subplot()
    for session in followed:
        points = by_session[session]
        axis.plot([a.at for a in points], [a.propensity for a in points], ".-",
                  label=session[:8])
    axis.set(xlabel="seconds into the demo", ylabel="propensity",
             title="propensity over time, the sessions whose score changed most")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "propensity.png", dpi=100)

    latencies = np.array([a.latency_ms for a in answers]) if answers else np.array([0.0])
    figure = Figure(figsize=(6, 3.5))
    axis = figure.add_subplot()
    axis.hist(latencies, bins=50)
    axis.set(xlabel="scorer latency seen by the shop (ms)", ylabel="requests",
             title="scorer latency")
    figure.tight_layout()
    figure.savefig(folder / "latency.png", dpi=100)

    fresh = np.array(watch.freshness_p50_s) if watch.freshness_p50_s else np.array([0.0])
    figure = Figure(figsize=(6, 3.5))
    axis = figure.add_subplot()
    axis.hist(fresh, bins=30)
    axis.set(xlabel="event arrival -> readable in Redis, p50 per micro-batch (s)",
             ylabel="micro-batches", title="feature freshness")
    figure.tight_layout()
    figure.savefig(folder / "freshness.png", dpi=100)

    lines = [
        "# propensity demo report", "",
        f"- events replayed: {sent:,}",
        f"- model: {model_version}",
        f"- scorer answers: {len(answers):,}, errors {watch.errors}, degraded "
        f"{sum(a.degraded for a in answers)}; latency p50 {np.percentile(latencies, 50):.1f} ms,"
        f" p99 {np.percentile(latencies, 99):.1f} ms",
        f"- feature freshness (p50 per micro-batch): median {np.median(fresh):.2f} s, max "
        f"{fresh.max():.2f} s over {len(watch.freshness_p50_s)} batches",
        f"- the daily batch over the streamed day, for {batch_effect}", "",
        "", "## Champion and challenger", "",
        "The shop's answers by variant: "
        + ", ".join(f"{variant} {count:,}" for variant, count in sorted(collections.Counter(
            a.variant for a in answers).items())) + ". Live quality of each on the replayed "
        "sample (`propensity monitor`; outcomes from the lake):", "",
        "| " + " | ".join(QUALITY_HEADER) + " |", "|" + "---|" * len(QUALITY_HEADER),
        *("| " + " | ".join(quality_cells(row)) + " |" for row in monitored.quality), "",
        "```", readout.format(), "```", "",
        "Drift of the inputs and the score against each version's training profile, with "
        "plots: [the monitor's report](monitor/report.md).", "",
        "![propensity over time](propensity.png)", "",
        "![scorer latency](latency.png)", "",
        "![feature freshness](freshness.png)", "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
