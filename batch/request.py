"""What a run of the daily batch is asked to do: the typed request, and the command-line
arguments that give it. `propensity batch` and the EMR step's spark-submit entry point
(batch/job.py) read the same arguments; no Spark here, so the CLI can offer them without it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from propensity.batch.errors import BatchError
from propensity.commandline import input_file


@dataclass(frozen=True)
class BatchRun:
    """`imports`: REES46 files loaded into the lake first. The days: `as_of` alone, or the
    range `first`..`last`, or (neither) the imported days, else the lake's last day."""

    imports: tuple[Path, ...] = ()
    as_of: date | None = None
    first: date | None = None
    last: date | None = None

    def __post_init__(self) -> None:
        if (self.first is None) != (self.last is None):
            raise BatchError("--from and --to go together")
        if self.as_of and self.first:
            raise BatchError("--as-of or --from/--to, not both")
        if self.first and self.last and self.first > self.last:
            raise BatchError(f"--from {self.first} is after --to {self.last}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    days = parser.add_mutually_exclusive_group()
    days.add_argument("--as-of", type=date.fromisoformat, metavar="DATE",
                      help="snapshots as of the end of this day (default: the lake's last day)")
    days.add_argument("--from", dest="first", type=date.fromisoformat, metavar="DATE",
                      help="first day of a backfill range (with --to)")
    parser.add_argument("--to", dest="last", type=date.fromisoformat, metavar="DATE",
                        help="last day of a backfill range")
    parser.add_argument("--import", dest="imports", action="append", type=input_file,
                        default=[], metavar="FILE", help="REES46 file to load into the lake "
                        "first (repeatable); without dates, the run covers the imported days")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def request_of(args: argparse.Namespace) -> BatchRun:
    return BatchRun(tuple(args.imports), args.as_of, args.first, args.last)
