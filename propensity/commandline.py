"""What every command line of the project shares: argument types that check each value when
the command line is read (before any work starts), and the log format. The operator's CLI
(ops/cli.py) and the jobs' spark-submit entry points (the EMR steps) use them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path


def input_file(text: str) -> Path:
    """An input file, checked when the command line is read: before any work starts."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return path


def number(kind: type[int] | type[float], least: float, inclusive: bool = True,
            most: float | None = None) -> Callable[[str], int | float]:
    """An argparse type: a number of `kind` from `least` (inclusive or not) up to `most`."""
    bound = f">= {least:g}" if inclusive else f"> {least:g}"
    wanted = f"{'an integer' if kind is int else 'a number'} {bound}" + (
        f" and <= {most:g}" if most is not None else "")

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {wanted}: {text!r}") from None
        if not math.isfinite(value) or value < least or (value == least and not inclusive) or (
                most is not None and value > most):
            raise argparse.ArgumentTypeError(f"not {wanted}: {text!r}")
        return value

    return parse


POSITIVE = number(float, 0, inclusive=False)
POSITIVE_INT = number(int, 1)
NON_NEGATIVE = number(float, 0)
NON_NEGATIVE_INT = number(int, 0)
PORT = number(int, 1, most=65535)


def day_range(text: str) -> tuple[date, date]:
    first, sep, last = text.partition(":")
    try:
        return date.fromisoformat(first), date.fromisoformat(last if sep else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not FROM:TO dates: {text!r}") from None


def log_to_stderr(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger("propensity").setLevel(logging.DEBUG)
    for noisy in ("py4j", "botocore", "urllib3", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
