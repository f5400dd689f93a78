"""The command line's input checks: bad options are refused when the command line is read,
in one line naming the option, before any stack, Spark session or load starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from propensity.ops.cli import _parser
from propensity.samples import MULTICAT_SAMPLE


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--speed", "0"], "argument --speed: not a number > 0: '0'"),
    (["demo", "--speed", "fast"], "argument --speed: not a number > 0: 'fast'"),
    (["demo", "--duration", "-5"], "argument --duration: not a number > 0: '-5'"),
    (["demo", "--speed", "nan"], "argument --speed: not a number > 0: 'nan'"),
    (["demo", "--history", "/no/such.csv"], "argument --history: no such file: /no/such.csv"),
    (["replay", "/no/such.csv"], "argument file: no such file: /no/such.csv"),
    (["replay", str(MULTICAT_SAMPLE), "--events-per-record", "0"],
     "argument --events-per-record: not an integer >= 1: '0'"),
    (["stream", "--trigger", "-1"], "argument --trigger: not a number >= 0: '-1'"),
    (["stream", "--max-records-per-batch", "2.5"],
     "argument --max-records-per-batch: not an integer >= 0: '2.5'"),
    (["serve", "--port", "70000"], "argument --port: not an integer >= 1 and <= 65535: '70000'"),
    (["serve", "--workers", "0"], "argument --workers: not an integer >= 1: '0'"),
    (["bench", "serve", "--rps", "0"], "argument --rps: not a number > 0: '0'"),
    (["bench", "batch", "--days", "0"], "argument --days: not an integer >= 1: '0'"),
    (["batch", "--import", "/no/such.csv"], "argument --import: no such file: /no/such.csv"),
    (["train", "--train", str(MULTICAT_SAMPLE), "--valid", "/no/such.csv"],
     "argument --valid: no such file: /no/such.csv"),
])
def test_bad_options_are_refused_naming_the_option(argv: list[str], message: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_good_options_are_read_as_numbers_and_paths() -> None:
    args = _parser().parse_args(["demo", "--speed", "120", "--duration", "30",
                                 "--history", str(MULTICAT_SAMPLE)])
    assert (args.speed, args.duration, args.history) == (120.0, 30.0, [Path(MULTICAT_SAMPLE)])
    assert _parser().parse_args(["serve", "--port", "8001"]).port == 8001
    assert _parser().parse_args(["stream", "--trigger", "0"]).trigger == 0.0
