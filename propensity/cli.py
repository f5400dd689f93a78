"""`propensity`: the single command-line entry point.

Each subcommand imports its module only when it runs, so `propensity stack up` stays quick.
Settings come from the environment (see propensity.settings); `eval "$(propensity stack up)"`
points every later command at the local stack.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from pathlib import Path

from propensity import extra_providing
from propensity.bench import CHAOS_SCENARIOS, SOAK_FULL_S, SOAK_SHORT_S
from propensity.rollout import Challenger
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        extra = extra_providing(exc.name)
        if extra is None:
            raise
        print(f"propensity: error: this command needs the `{extra}` extra ({exc}): "
              f"pip install 'propensity[{extra}]'", file=sys.stderr)
        return 2
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"propensity: error: {exc}{_unreachable_hint(exc)}", file=sys.stderr)
        return 2


def _unreachable_hint(exc: Exception) -> str:
    """What to do when AWS or Redis cannot be reached: most often, no local stack."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError
    from redis.exceptions import ConnectionError as RedisConnectionError

    if isinstance(exc, NoCredentialsError) and Settings().aws_endpoint_url is None:
        return ("; AWS_ENDPOINT_URL is unset, so this went to AWS itself: for the local stack "
                'run `eval "$(propensity stack up)"` first')
    if isinstance(exc, EndpointConnectionError | RedisConnectionError):
        return ('; is the stack up? `propensity stack status` tells, '
                '`eval "$(propensity stack up)"` starts it')
    return ""


class UsageError(ValueError):
    """Options that do not go together."""


def _expected_errors() -> tuple[type[Exception], ...]:
    """Failures a user can act on: reported in one line, without a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from batch.checks import ValidationError
    from batch.errors import BatchError
    from propensity.events import ContractError
    from propensity.kinesis import KinesisPutError
    from propensity.model_store import ModelStoreError
    from propensity.stack import StackError
    from training.dataset import DatasetError

    return (ContractError, StackError, KinesisPutError, FileNotFoundError, BotoCoreError,
            ClientError, BatchError, ValidationError, ModelStoreError, DatasetError,
            UsageError, RedisConnectionError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="propensity", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    stack = commands.add_parser("stack", help="the embedded local stack (redis-server, moto)")
    stack_commands = stack.add_subparsers(required=True, metavar="ACTION")
    stack_commands.add_parser(
        "up", help="start it (idempotent) and print export lines for eval"
    ).set_defaults(handler=_stack_up)
    stack_commands.add_parser("down", help="stop what `up` started").set_defaults(
        handler=_stack_down)
    stack_commands.add_parser("status", help="what runs where").set_defaults(
        handler=_stack_status)
    stack_commands.add_parser(
        "provision", help="create the Kinesis stream and S3 buckets at the configured endpoint"
                          " (docker-compose's init step)"
    ).set_defaults(handler=_stack_provision)

    replay = commands.add_parser("replay", help="send a REES46 CSV file to Kinesis")
    replay.add_argument("file", type=_input_file, help="REES46 CSV, plain or .gz")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_POSITIVE, default=1.0,
                      help="original timing divided by N (default 1: real time)")
    pace.add_argument("--max", action="store_true", help="as fast as Kinesis accepts")
    replay.add_argument("--limit", type=_POSITIVE_INT, help="only the first K rows")
    replay.add_argument("--events-per-record", type=_POSITIVE_INT, default=1, metavar="K",
                        help="pack up to K events per Kinesis record (newline-delimited JSON)")
    replay.add_argument("--aggregate", action="store_true",
                        help="send the K events of a record as a KPL aggregated record instead "
                             "(one user record each; built by aws-kinesis-agg)")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(handler=_replay)

    stream = commands.add_parser(
        "stream", help="the streaming job: Kinesis -> session features in Redis and S3")
    stream.add_argument("--until-idle", action="store_true",
                        help="process everything available, then exit")
    stream.add_argument("--trigger", type=_NON_NEGATIVE, default=2.0, metavar="SECONDS",
                        help="micro-batch interval when running continuously (default 2)")
    stream.add_argument("--starting-position", choices=["TRIM_HORIZON", "LATEST"],
                        default="TRIM_HORIZON", help="where a new checkpoint starts reading")
    stream.add_argument("--max-records-per-batch", type=_NON_NEGATIVE_INT, default=0, metavar="N",
                        help="cap Kinesis records per micro-batch (default: all available)")
    stream.add_argument("--verbose", action="store_true",
                        help="also log Spark's per-batch durations and state metrics")
    stream.set_defaults(handler=_stream)

    batch = commands.add_parser(
        "batch", help="the daily batch: user and product features as of each day, into Feast")
    _batch_arguments(batch)
    batch.set_defaults(handler=_batch)

    dataset = commands.add_parser(
        "dataset", help="a point-in-time training set: points, labels, features through Feast")
    source = dataset.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", type=_input_file, metavar="FILE",
                        help="REES46 file whose events are the points (imported and batched "
                             "with --history first)")
    source.add_argument("--lake", action="store_true",
                        help="points from the streamed sessions in the lake")
    dataset.add_argument("--history", type=_input_file, action="append", default=[], metavar="FILE",
                         help="earlier REES46 file for the user and product features "
                              "(repeatable; with --events)")
    dataset.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    dataset.add_argument("--json", action="store_true", help="print the summary as JSON")
    dataset.set_defaults(handler=_dataset)

    train = commands.add_parser(
        "train", help="train, evaluate, check and register a model (point-in-time sets)")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", dest="train_file", type=_input_file, metavar="FILE",
                        help="REES46 file whose sessions the model learns from (with --valid)")
    source.add_argument("--lake", action="store_true",
                        help="streamed sessions in the lake (with --train-days, --valid-days)")
    train.add_argument("--valid", dest="valid_file", type=_input_file, metavar="FILE",
                       help="later REES46 file for early stopping, calibration and metrics")
    train.add_argument("--history", type=_input_file, action="append", default=[], metavar="FILE",
                       help="earlier REES46 file for user and product features (repeatable)")
    train.add_argument("--train-days", type=_day_range, metavar="FROM:TO",
                       help="with --lake: days to learn from, e.g. 2019-10-01:2019-10-31")
    train.add_argument("--valid-days", type=_day_range, metavar="FROM:TO",
                       help="with --lake: later days for validation")
    train.add_argument("--out", type=Path, help="report folder (default: "
                       "$PROPENSITY_HOME/training/last)")
    train.add_argument("--no-register", action="store_true",
                       help="write the report only, store nothing")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(handler=_train)

    retrain = commands.add_parser(
        "retrain", help="a challenger from the lake's newest days (never the champion)")
    retrain.add_argument("--days", type=_number(int, 2), default=28,
                         help="the lake's newest days to learn from (default 28)")
    retrain.add_argument("--valid-days", type=_number(int, 1), default=7,
                         help="the newest of them that choose the settings (default 7)")
    retrain.add_argument("--out", type=Path, default=Path(".propensity/retrain"),
                         help="folder for the report and the model files")
    retrain.add_argument("--json", action="store_true", help="print only the JSON")
    retrain.set_defaults(handler=_retrain)

    evaluate = commands.add_parser(
        "evaluate", help="score a REES46 file's prediction points with a stored model")
    evaluate.add_argument("--events", type=_input_file, required=True, metavar="FILE")
    evaluate.add_argument("--history", type=_input_file, action="append", default=[],
                          metavar="FILE",
                          help="earlier REES46 file for user and product features (repeatable)")
    evaluate.add_argument("--model", metavar="VERSION", help="stored version (default: latest)")
    evaluate.add_argument("--predictions-out", type=Path, required=True, metavar="PATH",
                          help="scores per point: .csv, else Parquet")
    evaluate.add_argument("--json", action="store_true", help="print only the JSON")
    evaluate.set_defaults(handler=_evaluate)

    model = commands.add_parser(
        "model", help="the model store: versions, the champion (`latest`), a challenger")
    model_commands = model.add_subparsers(required=True, metavar="ACTION")
    model_commands.add_parser("list", help="stored versions, newest last").set_defaults(
        handler=_model_list)
    model_commands.add_parser(
        "status", help="the champion, the challenger and its share").set_defaults(
        handler=_model_status)
    canary = model_commands.add_parser(
        "canary", help="a version answers for a share of the shoppers (by a stable hash)")
    canary.add_argument("version")
    canary.add_argument("--share", type=_number(float, 0, inclusive=False, most=1),
                        default=0.05,
                        help="share of the shoppers it answers for (default 0.05)")
    canary.set_defaults(handler=_model_canary)
    shadow = model_commands.add_parser(
        "shadow", help="a version scores every request beside the champion, which answers")
    shadow.add_argument("version")
    shadow.set_defaults(handler=_model_shadow)
    promote = model_commands.add_parser(
        "promote", help="make a version the champion (default: the challenger)")
    promote.add_argument("version", nargs="?")
    promote.set_defaults(handler=_model_promote)
    model_commands.add_parser(
        "rollback", help="end the challenger; without one, move `latest` back to the "
        "version it replaced").set_defaults(handler=_model_rollback)

    serve = commands.add_parser("serve", help="the scorer: FastAPI on uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_PORT, default=8000)
    serve.add_argument("--workers", type=_POSITIVE_INT, default=1,
                       help="processes (each loads the model and reads Redis itself)")
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser("bench", help="benchmarks that print their figures")
    benches = bench.add_subparsers(required=True, metavar="WHAT")
    bench_stream = benches.add_parser(
        "stream", help="the streaming job's sustained events/s and freshness")
    bench_stream.add_argument("--rate", type=_POSITIVE, default=2000, help="events/s offered")
    bench_stream.add_argument("--duration", type=_POSITIVE, default=60, metavar="SECONDS")
    bench_stream.add_argument("--events-per-record", type=_POSITIVE_INT, default=10, metavar="K")
    bench_stream.add_argument("--trigger", type=_NON_NEGATIVE, default=1.0, metavar="SECONDS")
    bench_stream.add_argument("--warmup", type=_NON_NEGATIVE, default=15, metavar="SECONDS",
                              help="leave events sent in the first SECONDS out of freshness")
    bench_stream.add_argument("--shape", type=_input_file, default=MULTICAT_SAMPLE,
                              help="REES46 file whose sessions the traffic resamples")
    bench_stream.add_argument(
        "--master", action="append", default=[], metavar="MASTER",
        help="Spark master of the job (default PROPENSITY_SPARK_MASTER); repeat for a table, "
             "e.g. --master 'local-cluster[1,1,2048]' --master 'local-cluster[2,1,2048]'")
    bench_stream.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="also profile the measured window (py-spy over the job's Python processes, a "
             "Java Flight Recording in each JVM), keep the raw files in DIR and print where "
             "the CPU goes")
    bench_stream.set_defaults(handler=_bench_stream)

    bench_batch = benches.add_parser(
        "batch", help="the daily batch and training-set build on generated events")
    bench_batch.add_argument("--events", type=_POSITIVE_INT, default=1_000_000, metavar="N",
                             help="generated events in all (default 1,000,000)")
    bench_batch.add_argument("--days", type=_POSITIVE_INT, default=30, help="days they span")
    bench_batch.add_argument("--shape", type=_input_file, default=MULTICAT_SAMPLE,
                             help="REES46 file whose sessions the events resample")
    bench_batch.set_defaults(handler=_bench_batch)

    bench_serve = benches.add_parser(
        "serve", help="the scorer under load, then `feast serve` under the same load")
    bench_serve.add_argument("--rps", type=_POSITIVE, action="append", metavar="R",
                             help="offered requests/s (repeatable; default 2000)")
    bench_serve.add_argument("--duration", type=_POSITIVE, default=30, metavar="SECONDS")
    bench_serve.add_argument("--workers", type=_POSITIVE_INT, default=1, help="scorer processes")
    bench_serve.add_argument("--shape", type=_input_file, default=MULTICAT_SAMPLE,
                             help="REES46 file whose sessions are written to Redis and asked for")
    bench_serve.set_defaults(handler=_bench_serve)

    bench_chaos = benches.add_parser(
        "chaos", help="faults under load: job kills, Redis restarts under the job and the "
        "scorer, Kinesis throttling, scorer overload, a soak")
    bench_chaos.add_argument("--short", action="store_true",
                             help="the quick form (CI): fewer kills, shorter loads")
    bench_chaos.add_argument("--file", type=_input_file, default=MULTICAT_SAMPLE,
                             help="REES46 file replayed and served (default: the sample)")
    bench_chaos.add_argument("--only", action="append", choices=CHAOS_SCENARIOS, metavar="SCENARIO",
                             help="run only this scenario (repeatable): "
                                  + ", ".join(CHAOS_SCENARIOS))
    bench_chaos.add_argument(
        "--soak-minutes", type=_number(float, SOAK_FULL_S / 60), metavar="M",
        help=f"the soak's length (at least {SOAK_FULL_S / 60:g}; default {SOAK_FULL_S / 60:g}, "
             f"{SOAK_SHORT_S / 60:g} with --short)")
    bench_chaos.set_defaults(handler=_bench_chaos)

    monitor = commands.add_parser(
        "monitor", help="live quality of the served models from the prediction log and the "
        "lake (--day D), or an A/B test's conversion (ab)")
    monitor.add_argument("--day", type=date.fromisoformat, metavar="DATE",
                         help="the day whose predictions to measure (UTC)")
    monitor.add_argument("--no-store", action="store_true",
                         help="print only: neither store the figures nor publish them")
    monitor.add_argument("--json", action="store_true", help="print the figures as JSON")
    monitor.set_defaults(handler=_monitor)
    monitor_commands = monitor.add_subparsers(metavar="ACTION")
    ab = monitor_commands.add_parser(
        "ab", help="conversion per variant, the two-proportion test and the sample size")
    ab.add_argument("--days", type=_day_range, required=True, metavar="FROM:TO",
                    help="the experiment's days (inclusive, UTC)")
    ab.add_argument("--lift", type=float, default=0.05,
                    help="relative lift of conversion to size the test for (default 0.05)")
    ab.add_argument("--json", action="store_true", help="print the figures as JSON")
    ab.set_defaults(handler=_monitor_ab)

    demo = commands.add_parser("demo", help="the end-to-end demo on the bundled real sample")
    demo.add_argument("--file", type=_input_file, default=MULTICAT_SAMPLE,
                      help="REES46 CSV to replay")
    demo.add_argument("--speed", type=_POSITIVE, default=80.0,
                      help="replay at N times the original pace (default 80: the sample's "
                           "3 hours in about 2 minutes)")
    demo.add_argument("--duration", type=_POSITIVE, default=150.0, metavar="SECONDS",
                      help="stop each part of the replay (before and after the challenger) "
                           "after this long (default 150)")
    demo.add_argument("--history", type=_input_file, action="append", default=[], metavar="FILE",
                      help="earlier REES46 file to import and batch first (repeatable)")
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the demo's stack running at the end")
    demo.set_defaults(handler=_demo)
    return parser


def _batch_arguments(parser: argparse.ArgumentParser) -> None:
    days = parser.add_mutually_exclusive_group()
    days.add_argument("--as-of", type=date.fromisoformat, metavar="DATE",
                      help="snapshots as of the end of this day (default: the lake's last day)")
    days.add_argument("--from", dest="first", type=date.fromisoformat, metavar="DATE",
                      help="first day of a backfill range (with --to)")
    parser.add_argument("--to", dest="last", type=date.fromisoformat, metavar="DATE",
                        help="last day of a backfill range")
    parser.add_argument("--import", dest="imports", action="append", type=_input_file, default=[],
                        metavar="FILE", help="REES46 file to load into the lake first "
                        "(repeatable); without dates, the run covers the imported days")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _batch(args: argparse.Namespace) -> int:
    from batch.job import run

    _log_to_stderr()
    summary = run(Settings(), args)
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        print(summary.format())
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from training.dataset import build

    _log_to_stderr()
    summary = build(Settings(), args)
    print(json.dumps(asdict(summary)) if args.json else summary.format())
    return 0


def _input_file(text: str) -> Path:
    """An input file, checked when the command line is read: before any work starts."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return path


def _number(kind: type[int] | type[float], least: float, inclusive: bool = True,
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


_POSITIVE = _number(float, 0, inclusive=False)
_POSITIVE_INT = _number(int, 1)
_NON_NEGATIVE = _number(float, 0)
_NON_NEGATIVE_INT = _number(int, 0)
_PORT = _number(int, 1, most=65535)


def _day_range(text: str) -> tuple[date, date]:
    first, sep, last = text.partition(":")
    try:
        return date.fromisoformat(first), date.fromisoformat(last if sep else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not FROM:TO dates: {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    from training.train import files_data, lake_data, train

    if args.lake:
        if not (args.train_days and args.valid_days) or args.history:
            raise UsageError("--lake needs --train-days and --valid-days, and no --history")
    elif not args.valid_file or args.train_days or args.valid_days:
        raise UsageError("--train FILE needs --valid FILE (the days are for --lake)")
    _log_to_stderr()
    settings = Settings()
    data = (lake_data(settings, args.train_days, args.valid_days) if args.lake else
            files_data(settings, args.train_file, args.valid_file, args.history))
    result = train(settings, data, args.out or settings.home / "training" / "last",
                   register=not args.no_register)
    print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from training.retrain import Retrain, retrain

    _log_to_stderr()
    settings = Settings()
    result = retrain(settings, Retrain(args.days, args.valid_days,
                                       settings.retrain_canary_share, args.out))
    print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    _log_to_stderr()
    result = evaluate(Settings(), args.events, args.history, args.model, args.predictions_out)
    if not args.json:
        m = result["metrics"] or {}
        print(f"model {result['model_version']} on {args.events}: ROC AUC "
              f"{m.get('roc_auc')} {m.get('roc_auc_ci95')}; predictions in "
              f"{args.predictions_out}", file=sys.stderr)
    print(json.dumps(result, default=str))
    return 0


def _model_list(_: argparse.Namespace) -> int:
    from propensity import model_store

    versions = model_store.list_versions(Settings())
    if not versions:
        print("no stored model versions")
    for v in versions:
        auc = f"{v.validation_auc:.4f}" if v.validation_auc is not None else "n/a"
        print(f"{'*' if v.is_latest else ' '} {v.version}  validation AUC {auc}  checks "
              f"{'passed' if v.checks_passed else 'FAILED'}  {v.trained_on}")
    return 0


def _model_status(_: argparse.Namespace) -> int:
    from propensity import model_store

    rollout = model_store.rollout(Settings())
    print(f"champion (latest): {rollout.champion or 'none'}")
    print(f"challenger: {_challenger_text(rollout.challenger)}")
    return 0


def _challenger_text(challenger: Challenger | None) -> str:
    if challenger is None:
        return "none"
    share = f" for {challenger.share:.1%} of the shoppers" if challenger.share else ""
    return f"{challenger.version} in {challenger.mode}{share}"


def _model_canary(args: argparse.Namespace) -> int:
    from propensity import model_store

    challenger = model_store.canary(Settings(), args.version, args.share)
    print(f"challenger: {_challenger_text(challenger)}")
    return 0


def _model_shadow(args: argparse.Namespace) -> int:
    from propensity import model_store

    print(f"challenger: {_challenger_text(model_store.shadow(Settings(), args.version))}")
    return 0


def _model_promote(args: argparse.Namespace) -> int:
    from propensity import model_store

    print(f"latest -> {model_store.promote(Settings(), args.version)}")
    return 0


def _model_rollback(_: argparse.Namespace) -> int:
    from propensity import model_store

    rolled = model_store.rollback(Settings())
    if rolled.ended_challenger:
        print(f"challenger {rolled.ended_challenger} ended; {rolled.latest} answers everyone")
    else:
        print(f"latest -> {rolled.latest}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from monitoring import live, report

    if args.day is None:
        raise UsageError("monitor needs --day DATE (or the ab action)")
    measured = live.run(Settings(), live.MonitorDay(args.day, store=not args.no_store,
                                                    publish=not args.no_store))
    print(json.dumps(asdict(measured), default=str) if args.json else report.text(measured))
    return 0


def _monitor_ab(args: argparse.Namespace) -> int:
    from monitoring import ab

    first, last = args.days
    result = ab.run(Settings(), ab.AbTest(first, last, args.lift))
    print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    Settings()  # fail here, with the setting's name, rather than in each worker
    uvicorn.run("serving.app:app_from_environment", factory=True, host=args.host,
                port=args.port, workers=args.workers, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def _stack(settings: Settings):
    from propensity.stack import LocalStack

    return LocalStack(settings.home)


def _stack_up(_: argparse.Namespace) -> int:
    started = time.monotonic()
    stack = _stack(Settings())
    settings = stack.up()
    for status in stack.status():
        svc = status.service
        print(f"{svc.name:<6} pid {svc.pid:<8} 127.0.0.1:{svc.port}", file=sys.stderr)
    print(f"stack up in {time.monotonic() - started:.1f} s; "
          'configure a shell with: eval "$(propensity stack up)"', file=sys.stderr)
    for name, value in sorted(settings.to_env().items()):
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _stack_down(_: argparse.Namespace) -> int:
    stopped = _stack(Settings()).down()
    for svc in stopped:
        print(f"stopped {svc.name} (pid {svc.pid})")
    if not stopped:
        print("nothing of ours was running")
    return 0


def _stack_status(_: argparse.Namespace) -> int:
    from propensity import aws

    stack = _stack(Settings())
    statuses = stack.status()
    if not statuses:
        print(f"the local stack is not up (home: {stack.home})")
        return 1
    healthy = True
    for status in statuses:
        svc = status.service
        state = ("running" if status.running else "stopped") + (
            ", answering" if status.answering else ", not answering")
        healthy &= status.running and status.answering
        print(f"{svc.name:<6} pid {svc.pid:<8} 127.0.0.1:{svc.port:<6} {state}  log {svc.log}")
    if healthy:
        settings = stack.settings()
        kinesis = aws.client("kinesis", settings)
        summary = kinesis.describe_stream_summary(StreamName=settings.kinesis_stream)
        desc = summary["StreamDescriptionSummary"]
        print(f"kinesis stream {settings.kinesis_stream}: {desc['OpenShardCount']} open shards,"
              f" {desc['StreamStatus']}")
        buckets = [b["Name"] for b in aws.client("s3", settings).list_buckets()["Buckets"]]
        print(f"s3 buckets: {', '.join(sorted(buckets))}")
    return 0 if healthy else 1


def _stack_provision(_: argparse.Namespace) -> int:
    from propensity import aws

    settings = Settings()
    aws.wait_for_endpoint(settings)
    aws.provision(settings)
    print(f"stream {settings.kinesis_stream} and buckets {', '.join(settings.buckets())} ready")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from propensity import aws
    from propensity.kinesis import KinesisWriter, ShardMap, list_shards
    from propensity.replay import replay

    settings = Settings()
    kinesis = aws.client("kinesis", settings)
    summary = replay(
        args.file,
        KinesisWriter(kinesis, settings.kinesis_stream),
        ShardMap(list_shards(kinesis, settings.kinesis_stream)),
        speed=None if args.max else args.speed,
        limit=args.limit,
        events_per_record=args.events_per_record,
        aggregate=args.aggregate,
        progress=not (args.quiet or args.json),
    )
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(f"replayed {args.file} into {settings.kinesis_stream}")
        print(summary.format())
    return 0


def _stream(args: argparse.Namespace) -> int:
    from pyspark.errors import StreamingQueryException

    from streaming.checkpoint import CheckpointRefused
    from streaming.job import StreamOptions, run
    from streaming.kinesis_source import CheckpointStreamMismatch

    _log_to_stderr(verbose=args.verbose)
    settings = Settings()
    try:
        run(settings, StreamOptions(trigger_s=args.trigger, until_idle=args.until_idle,
                                    starting_position=args.starting_position,
                                    max_records_per_batch=args.max_records_per_batch))
    except CheckpointRefused as exc:
        print(f"propensity: error: {exc}", file=sys.stderr)
        return 2
    except StreamingQueryException as exc:
        # Spark wraps the source's error in its own (with the plan): the gist on one line.
        mismatch = CheckpointStreamMismatch.message_in(exc)
        if mismatch is None:
            raise
        print(f"propensity: error: checkpoint {settings.checkpoint_dir}: {mismatch}",
              file=sys.stderr)
        return 2
    return 0


def _bench_stream(args: argparse.Namespace) -> int:
    from propensity.bench.stream import format_table, run_stream_bench

    results = []
    for master in args.master or [""]:
        # one profile folder per master: "local-cluster[2,1,2048]" -> local-cluster-2-1-2048
        profile = args.profile and args.profile / (re.sub(r"\W+", "-", master).strip("-")
                                                   or "default")
        results.append(run_stream_bench(Settings(), args.rate, args.duration, args.shape,
                                        args.events_per_record, args.trigger, args.warmup,
                                        master, profile))
        print(results[-1].format(), flush=True)
    if len(results) > 1:
        print(format_table(results))
    return 0


def _bench_batch(args: argparse.Namespace) -> int:
    from propensity.bench.batch import run_batch_bench

    _log_to_stderr()
    print(run_batch_bench(Settings(), args.events, args.days, args.shape).format())
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from propensity.bench.serve import run_serve_bench

    print(run_serve_bench(Settings(), args.rps or [2000.0], args.duration, args.shape,
                          args.workers).format())
    return 0


def _bench_chaos(args: argparse.Namespace) -> int:
    from propensity.bench.chaos import run_chaos, verdict

    outcomes = run_chaos(Settings(), args.file, args.short, tuple(args.only or CHAOS_SCENARIOS),
                         args.soak_minutes and args.soak_minutes * 60)
    print(verdict(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


def _log_to_stderr(verbose: bool = False) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger("propensity").setLevel(logging.DEBUG)
    for noisy in ("py4j", "botocore", "urllib3", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _demo(args: argparse.Namespace) -> int:
    from propensity.demo import run_demo

    return run_demo(Settings(), args.file, keep_running=args.keep_running, speed=args.speed,
                    duration_s=args.duration, history=args.history)


if __name__ == "__main__":
    sys.exit(main())
