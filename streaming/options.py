"""What a run of the streaming job is asked to do: the typed options, and the command-line
arguments that give them. `propensity stream` and the EMR step's spark-submit entry point
(streaming/job.py) read the same arguments; no Spark here, so the CLI can offer them without it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from propensity.commandline import NON_NEGATIVE, NON_NEGATIVE_INT

STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST")


@dataclass(frozen=True)
class StreamOptions:
    trigger_s: float = 2.0
    until_idle: bool = False
    starting_position: str = "TRIM_HORIZON"
    max_records_per_batch: int = 0

    def __post_init__(self) -> None:
        if self.starting_position not in STARTING_POSITIONS:
            raise ValueError(f"starting position {self.starting_position!r}: one of "
                             f"{', '.join(STARTING_POSITIONS)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until-idle", action="store_true",
                        help="process everything available, then exit")
    parser.add_argument("--trigger", type=NON_NEGATIVE, default=StreamOptions.trigger_s,
                        metavar="SECONDS",
                        help="micro-batch interval when running continuously (default 2)")
    parser.add_argument("--starting-position", choices=STARTING_POSITIONS,
                        default=StreamOptions.starting_position,
                        help="where a new checkpoint starts reading")
    parser.add_argument("--max-records-per-batch", type=NON_NEGATIVE_INT, default=0,
                        metavar="N",
                        help="cap Kinesis records per micro-batch (default: all available)")
    parser.add_argument("--verbose", action="store_true",
                        help="also log Spark's per-batch durations and state metrics")


def options_of(args: argparse.Namespace) -> StreamOptions:
    return StreamOptions(args.trigger, args.until_idle, args.starting_position,
                         args.max_records_per_batch)
