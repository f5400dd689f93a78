"""`propensity bench batch`: the daily batch and the training-set build at scale, on a fresh
local stack, with GENERATED events (real sessions of a REES46 file resampled under new session
ids, users returning; see propensity.ops.generate).

The N events span D days from 2019-10-01. Phases, and the events their rates divide:
- import: the first D-1 days' CSV through the event contract into the lake;
- backfill: snapshots of those D-1 days, one pass over the lake (aggregates, then publish);
- daily: the last day imported, then snapshots as of it (the whole lake read once);
- training set: the last day's events as points, features through Feast.
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from propensity import events as contract
from propensity.batch.request import BatchRun
from propensity.ops.generate import TrafficModel
from propensity.ops.stack import LocalStack
from propensity.settings import Settings

START = datetime(2019, 10, 1, tzinfo=UTC)


@dataclass
class BatchBench:
    events: int
    days: int
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # events each phase handled
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.events:,} GENERATED events over {self.days} days "
                 "(real sessions resampled)"]
        for phase, seconds in self.seconds.items():
            count = self.counts[phase]
            lines.append(f"  {phase:<28} {count:>11,} events {seconds:8.1f} s "
                         f"{count / seconds:>10,.0f} events/s")
        return "\n".join(lines + self.notes)


def write_generated(model: TrafficModel, path: Path, events: int, first_day: int, days: int,
                    seed: int) -> int:
    """About `events` generated events over `days` days from START + `first_day` days, as
    a REES46 CSV; returns how many were written."""
    duration = days * 86400.0
    start = (START + timedelta(days=first_day)).timestamp()
    written = 0
    with open(path, "w", newline="") as out:
        csv.writer(out).writerow(contract.REES46_COLUMNS)
        for frame in model.frames(start, events / duration, duration, seed=seed,
                                  chunk_s=3600.0, sessions_per_user=3.0):
            frame = frame.assign(event_time=frame["event_time"].dt.strftime(
                "%Y-%m-%d %H:%M:%S UTC"))
            frame[list(contract.REES46_COLUMNS)].to_csv(out, header=False, index=False)
            written += len(frame)
    return written


def run_batch_bench(base: Settings, events: int, days: int, shape: Path) -> BatchBench:
    from propensity.batch.job import run as run_batch
    from propensity.training.dataset import from_file

    stack = LocalStack(base.home / "bench-batch")
    settings = stack.up()
    try:
        with tempfile.TemporaryDirectory(prefix="propensity-bench-") as folder:
            work = Path(folder)
            model = TrafficModel.from_file(shape)
            history, last = work / "history.csv", work / "last-day.csv"
            per_day = events / days
            in_history = write_generated(model, history, int(per_day * (days - 1)), 0,
                                         days - 1, seed=0)
            in_last = write_generated(model, last, int(per_day), days - 1, 1, seed=1)
            bench = BatchBench(in_history + in_last, days)
            last_day = START.date() + timedelta(days=days - 1)

            backfill = run_batch(settings, BatchRun(
                imports=(history,), first=START.date(), last=last_day - timedelta(days=1)))
            _record(bench, "import", backfill.seconds["import"], backfill.imports[0].read)
            _record(bench, f"backfill {days - 1} days", backfill.seconds["aggregates"]
                    + backfill.seconds["publish"], backfill.events)
            bench.notes.append(
                f"  backfill: aggregates {backfill.seconds['aggregates']:.1f} s, publish "
                f"{backfill.seconds['publish']:.1f} s, {sum(backfill.rows.values()):,} "
                f"offline rows, {sum(backfill.online.values()):,} entities online")

            daily = run_batch(settings, BatchRun(imports=(last,), as_of=last_day))
            _record(bench, "daily (import + as-of day)", sum(daily.seconds.values()),
                    daily.events)

            started = time.monotonic()
            points, _ = from_file(settings, last, work / "dataset")
            _record(bench, "training set (1 day)", time.monotonic() - started, in_last)
            bench.notes.append(f"  training set: {len(points):,} points")
            return bench
    finally:
        stack.down()


def _record(bench: BatchBench, phase: str, seconds: float, events: int) -> None:
    bench.seconds[phase] = seconds
    bench.counts[phase] = events
