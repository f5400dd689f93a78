"""The batch run: import files (optional), compact the day before its last day (the lake, the
archive, the quarantine, the prediction log: propensity/compaction.py), compute the user and
product snapshots of a day or a range of days in one pass over the lake, validate them,
publish them.

`propensity batch ...` runs it; so does spark-submit on EMR (`spark-submit batch/job.py ...`
with PROPENSITY_SPARK_MASTER empty), with the same arguments (batch/request.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from propensity import cloudwatch, compaction, feature_repo
from propensity import features as F
from propensity.batch import aggregates, checks, lake, publish
from propensity.batch.errors import BatchError
from propensity.batch.importer import ImportSummary, import_file
from propensity.batch.request import BatchRun, add_arguments, request_of
from propensity.commandline import log_to_stderr
from propensity.lake import lake_days
from propensity.settings import Settings
from propensity.spark import spark_session

log = logging.getLogger("propensity.batch")


@dataclass
class BatchSummary:
    first_day: str = ""
    last_day: str = ""
    imports: list[ImportSummary] = field(default_factory=list)
    events: int = 0  # distinct events up to the last day
    rows: dict[str, int] = field(default_factory=dict)  # offline rows per view
    online: dict[str, int] = field(default_factory=dict)  # entities written to Redis per view
    checks: str = ""
    compacted: list[str] = field(default_factory=list)  # what compaction did, tree by tree
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def format(self) -> str:
        lines = [f"import {i.file}: read {i.read}, valid {i.valid}, duplicates {i.duplicates},"
                 f" invalid {sum(i.invalid.values())} {i.invalid or ''}, days {len(i.days)}"
                 for i in self.imports]
        lines.append(f"snapshots as of {self.first_day} .. {self.last_day} from "
                     f"{self.events} distinct events")
        lines.extend(f"{view}: {self.rows[view]} offline rows, {self.online[view]} entities "
                     "online" for view in self.rows)
        lines.append(f"checks: {self.checks}")
        lines.extend(f"compaction: {line}" for line in self.compacted)
        rates = self.rates()
        lines.append("time: " + ", ".join(
            f"{phase} {s:.1f} s" + (f" ({rates[phase]:,} events/s)" if phase in rates else "")
            for phase, s in self.seconds.items()))
        return "\n".join(lines)

    def rates(self) -> dict[str, float]:
        """Events per second of each phase."""
        imported = sum(i.read for i in self.imports)
        counts = {"import": imported, "aggregates": self.events, "publish": self.events}
        return {phase: round(counts[phase] / s) for phase, s in self.seconds.items()
                if s > 0 and counts.get(phase)}


def day_range(request: BatchRun, imported: list[str], lake_days: list[date]
              ) -> tuple[date, date]:
    """The run's first and last day from the request, the imported days and the lake."""
    if request.first and request.last:
        return request.first, request.last
    if request.as_of:
        return request.as_of, request.as_of
    if imported:
        return date.fromisoformat(min(imported)), date.fromisoformat(max(imported))
    if lake_days:
        return lake_days[-1], lake_days[-1]
    raise BatchError("the event lake is empty: import a file or run the streaming job")


def run(settings: Settings, request: BatchRun, spark: Any = None) -> BatchSummary:
    summary = BatchSummary()
    started = time.monotonic()
    for path in request.imports:
        summary.imports.append(import_file(settings, path))
    if request.imports:
        summary.seconds["import"] = time.monotonic() - started
    imported = sorted({d for i in summary.imports for d in i.days})
    first, last = day_range(request, imported, lake_days(settings))
    summary.first_day, summary.last_day = str(first), str(last)
    days = [date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1)]

    started = time.monotonic()
    summary.compacted = compact_day_before(settings, last)
    summary.seconds["compaction"] = time.monotonic() - started

    started = time.monotonic()
    spark = spark or spark_session("propensity-batch", settings.spark_master)
    events = aggregates.distinct_events(lake.read_events(spark, settings, until=last), last)
    events = events.persist()
    totals = aggregates.input_totals(events)
    summary.events = int(events.count())
    views: dict[str, tuple[str, Any, Any]] = {}
    for view, key, snapshots in (
            (F.USER_VIEW, F.USER_ID, aggregates.user_snapshots(events)),
            (F.PRODUCT_VIEW, F.PRODUCT_ID, aggregates.product_snapshots(events))):
        snapshots = snapshots.persist()
        views[view] = (key, aggregates.in_days(snapshots, first, last).toArrow(),
                       aggregates.latest(snapshots, key, last).toArrow())
        snapshots.unpersist()
    events.unpersist()
    summary.seconds["aggregates"] = time.monotonic() - started

    report = checks.validate({view: (key, rows.to_pandas(), latest.to_pandas())
                              for view, (key, rows, latest) in views.items()}, totals)
    summary.checks = report.render()
    if not report.ok:
        raise checks.ValidationError(report)

    started = time.monotonic()
    store = feature_repo.apply(settings)
    for view, (_, rows, latest) in views.items():
        summary.rows[view] = publish.write_offline(settings, view, rows, days)
        summary.online[view] = publish.write_online(settings, store, view, latest, last)
    summary.seconds["publish"] = time.monotonic() - started
    return summary


def compact_day_before(settings: Settings, day: date) -> list[str]:
    """Compacts every dataset's day before `day`, tree by tree. A tree that fails is reported
    and logged; the features of the day do not wait for it (the next run tries again)."""
    before = day - timedelta(days=1)
    if not compaction.is_closed(settings, before):
        return [f"{before} is not closed yet: not compacted"]
    done = []
    for dataset in compaction.Dataset:
        for layout in compaction.layouts(settings, dataset):
            try:
                done.append(compaction.compact_day(settings, layout, before).format())
            except Exception as exc:  # any: reported, and the run goes on
                log.exception("compacting %s %s failed", layout.uri, before)
                done.append(f"{layout.uri} {before}: failed: {exc}")
    return done


def run_and_print(settings: Settings, request: BatchRun, as_json: bool = False) -> None:
    """Runs the batch, reports its success to CloudWatch (the "batch late" alarm watches it)
    and prints its summary (JSON or text): `propensity batch`, the EMR step."""
    summary = run(settings, request)
    cloudwatch.report_success(settings, cloudwatch.DAILY_BATCH_SUCCEEDED)
    print(json.dumps(asdict(summary)) if as_json else summary.format())


def main(argv: list[str] | None = None) -> int:
    """The spark-submit entry point (the EMR batch step): `propensity batch`'s arguments."""
    parser = argparse.ArgumentParser(prog="batch/job.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    log_to_stderr()
    try:
        run_and_print(Settings(), request_of(args), args.json)
    except BatchError as exc:  # checks.ValidationError included
        print(f"batch: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
