"""`propensity bench compact`: a day of the lake and the session archive as the streaming job
leaves it (one object per micro-batch and tree), then compacted: the objects, the listing, the
daily batch's read of the lake and the archive's read before and after, on a fresh local stack
with GENERATED events (real sessions of a REES46 file resampled; see propensity.ops.generate).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from propensity import features as F
from propensity.lake import Dataset, archive_uri, day_objects, filesystem_of, read_table
from propensity.ops.bench.batch import START, write_generated
from propensity.ops.generate import TrafficModel
from propensity.ops.stack import LocalStack
from propensity.ops.testing import write_like_the_stream
from propensity.settings import Settings


@dataclass
class Reads:
    objects: dict[str, int] = field(default_factory=dict)  # per tree, in the day's folder
    seconds: dict[str, float] = field(default_factory=dict)  # per read


@dataclass
class CompactBench:
    events: int
    micro_batches: int
    before: Reads = field(default_factory=Reads)
    after: Reads = field(default_factory=Reads)
    compaction_s: float = 0.0

    def format(self) -> str:
        lines = [f"{self.events:,} GENERATED events of one day (real sessions resampled), "
                 f"written as {self.micro_batches:,} micro-batches; compaction "
                 f"{self.compaction_s:.1f} s",
                 f"  {'':<34} {'before':>10} {'after':>10}"]
        for tree, count in self.before.objects.items():
            lines.append(f"  {'objects: ' + tree:<34} {count:>10,} "
                         f"{self.after.objects[tree]:>10,}")
        for read, seconds in self.before.seconds.items():
            lines.append(f"  {read + ' (s)':<34} {seconds:>10.2f} "
                         f"{self.after.seconds[read]:>10.2f}")
        return "\n".join(lines)


def _measure(settings: Settings, spark, trees: dict[str, str]) -> Reads:
    """The day's objects per tree, and each read's best of two (the first warms Spark's
    Python workers and the JIT for both sides alike)."""
    from propensity.batch import lake

    day = START.date()
    reads = Reads()
    for tree, uri in trees.items():
        reads.objects[tree] = len(day_objects(*filesystem_of(settings, uri), day))
    timed = {
        "listing": lambda: [day_objects(*filesystem_of(settings, uri), day)
                            for uri in trees.values()],
        "batch: read the lake": lambda: lake.read_events(spark, settings, until=day).count(),
        "training: read the archive": lambda: read_table(
            settings, archive_uri(settings, F.SESSION_VIEW)),
    }
    for name, read in timed.items():
        reads.seconds[name] = min(_seconds(read) for _ in range(2))
    return reads


def _seconds(work) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def run_compact_bench(base: Settings, events: int, micro_batches: int,
                      shape: Path) -> CompactBench:
    from propensity.compaction import compact
    from propensity.spark import spark_session

    stack = LocalStack(base.home / "bench-compact")
    settings = stack.up()
    spark = spark_session("propensity-bench-compact", settings.spark_master)
    trees = {"lake": settings.events_uri,
             **{view: archive_uri(settings, view) for view in F.ARCHIVE_COLUMNS}}
    try:
        with tempfile.TemporaryDirectory(prefix="propensity-bench-") as folder:
            day = Path(folder) / "day.csv"
            written = write_generated(TrafficModel.from_file(shape), day, events, 0, 1, seed=0)
            bench = CompactBench(written, micro_batches)
            write_like_the_stream(settings, day, micro_batches, START + timedelta(days=1))
        bench.before = _measure(settings, spark, trees)
        started = time.monotonic()
        compact(settings, [Dataset.LAKE, Dataset.ARCHIVE], START.date())
        bench.compaction_s = time.monotonic() - started
        bench.after = _measure(settings, spark, trees)
        return bench
    finally:
        spark.stop()
        stack.down()
