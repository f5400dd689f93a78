"""`propensity`: the single command-line entry point.

Each subcommand imports its module only when it runs, so `propensity stack up` stays quick.
Settings come from the environment (see propensity.settings); `eval "$(propensity stack up)"`
points every later command at the local stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from propensity.batch.request import add_arguments as add_batch_arguments
from propensity.commandline import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    day_range,
    input_file,
    number,
)
from propensity.lake import Dataset
from propensity.ops import commands as handlers
from propensity.ops import extra_providing
from propensity.ops.bench import CHAOS_SCENARIOS, SOAK_FULL_S, SOAK_SHORT_S
from propensity.ops.commands import UsageError
from propensity.samples import MULTICAT_SAMPLE
from propensity.serving.server import add_arguments as add_serve_arguments
from propensity.settings import Settings
from propensity.streaming.options import add_arguments as add_stream_arguments


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


def _expected_errors() -> tuple[type[Exception], ...]:
    """Failures a user can act on: reported in one line, without a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from propensity.batch.errors import BatchError
    from propensity.events import ContractError
    from propensity.kinesis import KinesisPutError
    from propensity.model_store import ModelStoreError
    from propensity.ops.stack import StackError
    from propensity.training.dataset import DatasetError

    return (ContractError, StackError, KinesisPutError, FileNotFoundError, BotoCoreError,
            ClientError, BatchError, ModelStoreError, DatasetError,
            UsageError, RedisConnectionError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="propensity", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    stack = commands.add_parser("stack", help="the embedded local stack (redis-server, moto)")
    stack_commands = stack.add_subparsers(required=True, metavar="ACTION")
    stack_commands.add_parser(
        "up", help="start it (idempotent) and print export lines for eval"
    ).set_defaults(handler=handlers.stack_up)
    stack_commands.add_parser("down", help="stop what `up` started").set_defaults(
        handler=handlers.stack_down)
    stack_commands.add_parser("status", help="what runs where").set_defaults(
        handler=handlers.stack_status)
    stack_commands.add_parser(
        "provision", help="create the Kinesis stream and S3 buckets at the configured endpoint"
                          " (docker-compose's init step)"
    ).set_defaults(handler=handlers.stack_provision)

    replay = commands.add_parser("replay", help="send a REES46 CSV file to Kinesis")
    replay.add_argument("file", type=input_file, help="REES46 CSV, plain or .gz")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=POSITIVE, default=1.0,
                      help="original timing divided by N (default 1: real time)")
    pace.add_argument("--max", action="store_true", help="as fast as Kinesis accepts")
    replay.add_argument("--limit", type=POSITIVE_INT, help="only the first K rows")
    replay.add_argument("--events-per-record", type=POSITIVE_INT, default=1, metavar="K",
                        help="pack up to K events per Kinesis record (newline-delimited JSON)")
    replay.add_argument("--aggregate", action="store_true",
                        help="send the K events of a record as a KPL aggregated record instead "
                             "(one user record each; built by aws-kinesis-agg)")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(handler=handlers.replay)

    stream = commands.add_parser(
        "stream", help="the streaming job: Kinesis -> session features in Redis and S3")
    add_stream_arguments(stream)
    stream.set_defaults(handler=handlers.stream)

    batch = commands.add_parser(
        "batch", help="the daily batch: user and product features as of each day, into Feast")
    add_batch_arguments(batch)
    batch.set_defaults(handler=handlers.batch)

    dataset = commands.add_parser(
        "dataset", help="a point-in-time training set: points, labels, features through Feast")
    source = dataset.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", type=input_file, metavar="FILE",
                        help="REES46 file whose events are the points (imported and batched "
                             "with --history first)")
    source.add_argument("--lake", action="store_true",
                        help="points from the streamed sessions in the lake")
    dataset.add_argument("--history", type=input_file, action="append", default=[], metavar="FILE",
                         help="earlier REES46 file for the user and product features "
                              "(repeatable; with --events)")
    dataset.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    dataset.add_argument("--json", action="store_true", help="print the summary as JSON")
    dataset.set_defaults(handler=handlers.dataset)

    train = commands.add_parser(
        "train", help="train, evaluate, check and register a model (point-in-time sets)")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", dest="train_file", type=input_file, metavar="FILE",
                        help="REES46 file whose sessions the model learns from (with --valid)")
    source.add_argument("--lake", action="store_true",
                        help="streamed sessions in the lake (with --train-days, --valid-days)")
    train.add_argument("--valid", dest="valid_file", type=input_file, metavar="FILE",
                       help="later REES46 file for early stopping, calibration and metrics")
    train.add_argument("--history", type=input_file, action="append", default=[], metavar="FILE",
                       help="earlier REES46 file for user and product features (repeatable)")
    train.add_argument("--train-days", type=day_range, metavar="FROM:TO",
                       help="with --lake: days to learn from, e.g. 2019-10-01:2019-10-31")
    train.add_argument("--valid-days", type=day_range, metavar="FROM:TO",
                       help="with --lake: later days for validation")
    train.add_argument("--out", type=Path, help="report folder (default: "
                       "$PROPENSITY_HOME/training/last)")
    train.add_argument("--no-register", action="store_true",
                       help="write the report only, store nothing")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(handler=handlers.train)

    retrain = commands.add_parser(
        "retrain", help="a challenger from the lake's newest days (never the champion)")
    retrain.add_argument("--days", type=number(int, 2), default=28,
                         help="the lake's newest days to learn from (default 28)")
    retrain.add_argument("--valid-days", type=number(int, 1), default=7,
                         help="the newest of them that choose the settings (default 7)")
    retrain.add_argument("--out", type=Path, default=Path(".propensity/retrain"),
                         help="folder for the report and the model files")
    retrain.add_argument("--json", action="store_true", help="print only the JSON")
    retrain.set_defaults(handler=handlers.retrain)

    evaluate = commands.add_parser(
        "evaluate", help="score a REES46 file's prediction points with a stored model")
    evaluate.add_argument("--events", type=input_file, required=True, metavar="FILE")
    evaluate.add_argument("--history", type=input_file, action="append", default=[],
                          metavar="FILE",
                          help="earlier REES46 file for user and product features (repeatable)")
    evaluate.add_argument("--model", metavar="VERSION", help="stored version (default: latest)")
    evaluate.add_argument("--predictions-out", type=Path, required=True, metavar="PATH",
                          help="scores per point: .csv, else Parquet")
    evaluate.add_argument("--json", action="store_true", help="print only the JSON")
    evaluate.set_defaults(handler=handlers.evaluate)

    model = commands.add_parser(
        "model", help="the model store: versions, the champion (`latest`), a challenger")
    model_commands = model.add_subparsers(required=True, metavar="ACTION")
    model_commands.add_parser("list", help="stored versions, newest last").set_defaults(
        handler=handlers.model_list)
    model_commands.add_parser(
        "status", help="the champion, the challenger and its share").set_defaults(
        handler=handlers.model_status)
    canary = model_commands.add_parser(
        "canary", help="a version answers for a share of the shoppers (by a stable hash)")
    canary.add_argument("version")
    canary.add_argument("--share", type=number(float, 0, inclusive=False, most=1),
                        default=0.05,
                        help="share of the shoppers it answers for (default 0.05)")
    canary.set_defaults(handler=handlers.model_canary)
    shadow = model_commands.add_parser(
        "shadow", help="a version scores every request beside the champion, which answers")
    shadow.add_argument("version")
    shadow.set_defaults(handler=handlers.model_shadow)
    promote = model_commands.add_parser(
        "promote", help="make a version the champion (default: the challenger)")
    promote.add_argument("version", nargs="?")
    promote.set_defaults(handler=handlers.model_promote)
    model_commands.add_parser(
        "rollback", help="end the challenger; without one, move `latest` back to the "
        "version it replaced").set_defaults(handler=handlers.model_rollback)

    datasets = ["all", *(d.value for d in Dataset)]
    compact = commands.add_parser(
        "compact", help="rewrite a closed day's small objects into a few sorted files")
    compact.add_argument("--day", type=date.fromisoformat, required=True, metavar="DATE",
                         help="the day (closed: its end plus the watermark delay has passed)")
    compact.add_argument("--dataset", choices=datasets, default="all",
                         help="which dataset (default all)")
    compact.add_argument("--json", action="store_true", help="one JSON line per folder tree")
    compact.set_defaults(handler=handlers.compact)

    retention = commands.add_parser(
        "retention", help="remove day folders past their dataset's retention "
                          "(PROPENSITY_<DATASET>_RETENTION_DAYS)")
    retention.add_argument("--dataset", choices=datasets, default="all",
                           help="which dataset (default all)")
    retention.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    retention.add_argument("--today", type=date.fromisoformat, metavar="DATE",
                           help="the day to count from (default: today, UTC)")
    retention.set_defaults(handler=handlers.retention)

    forget = commands.add_parser(
        "forget", help="erase one shopper: events, archived features, quarantine, online "
                       "store, prediction log; records counts only")
    forget.add_argument("--user", type=int, required=True, metavar="USER_ID")
    forget.add_argument("--json", action="store_true", help="print the audit record as JSON")
    forget.set_defaults(handler=handlers.forget)

    deliver = commands.add_parser(
        "deliver", help="the delivery workflow's deployment to ECS and its smoke test")
    deliver_actions = deliver.add_subparsers(required=True, metavar="ACTION")
    deploy = deliver_actions.add_parser(
        "deploy", help="roll the scorer's service onto an image, smoke-test it, roll back on "
                       "failure")
    deploy.add_argument("--cluster", required=True, help="the ECS cluster")
    deploy.add_argument("--service", required=True, help="the scorer's ECS service")
    deploy.add_argument("--container", default="scorer", help="its container (default scorer)")
    deploy.add_argument("--image", required=True, help="the image's full name and tag")
    deploy.add_argument("--smoke-url", required=True, metavar="URL",
                        help="the scorer through its load balancer")
    deploy.add_argument("--timeout", type=POSITIVE, default=900, metavar="SECONDS",
                        help="how long a rollout may take (default 900)")
    deploy.set_defaults(handler=handlers.deliver_deploy)
    smoke = deliver_actions.add_parser(
        "smoke", help="/ready answers 200 and one /v1/propensity answers a propensity")
    smoke.add_argument("--url", required=True, help="the scorer's base URL")
    smoke.set_defaults(handler=handlers.deliver_smoke)

    serve = commands.add_parser("serve", help="the scorer: FastAPI on uvicorn")
    add_serve_arguments(serve)
    serve.set_defaults(handler=handlers.serve)

    bench = commands.add_parser("bench", help="benchmarks that print their figures")
    benches = bench.add_subparsers(required=True, metavar="WHAT")
    bench_stream = benches.add_parser(
        "stream", help="the streaming job's sustained events/s and freshness")
    bench_stream.add_argument("--rate", type=POSITIVE, default=2000, help="events/s offered")
    bench_stream.add_argument("--duration", type=POSITIVE, default=60, metavar="SECONDS")
    bench_stream.add_argument("--events-per-record", type=POSITIVE_INT, default=10, metavar="K")
    bench_stream.add_argument("--trigger", type=NON_NEGATIVE, default=1.0, metavar="SECONDS")
    bench_stream.add_argument("--warmup", type=NON_NEGATIVE, default=15, metavar="SECONDS",
                              help="leave events sent in the first SECONDS out of freshness")
    bench_stream.add_argument("--shape", type=input_file, default=MULTICAT_SAMPLE,
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
    bench_stream.set_defaults(handler=handlers.bench_stream)

    bench_batch = benches.add_parser(
        "batch", help="the daily batch and training-set build on generated events")
    bench_batch.add_argument("--events", type=POSITIVE_INT, default=1_000_000, metavar="N",
                             help="generated events in all (default 1,000,000)")
    bench_batch.add_argument("--days", type=POSITIVE_INT, default=30, help="days they span")
    bench_batch.add_argument("--shape", type=input_file, default=MULTICAT_SAMPLE,
                             help="REES46 file whose sessions the events resample")
    bench_batch.set_defaults(handler=handlers.bench_batch)

    bench_compact = benches.add_parser(
        "compact", help="a generated day's small objects, then compacted: objects and reads")
    bench_compact.add_argument("--events", type=POSITIVE_INT, default=200_000, metavar="N",
                               help="generated events of the day (default 200,000)")
    bench_compact.add_argument("--micro-batches", type=POSITIVE_INT, default=2_000,
                               metavar="M", help="micro-batches they are written in, one "
                               "object per tree each (default 2,000)")
    bench_compact.add_argument("--shape", type=input_file, default=MULTICAT_SAMPLE,
                               help="REES46 file whose sessions the events resample")
    bench_compact.set_defaults(handler=handlers.bench_compact)

    bench_serve = benches.add_parser(
        "serve", help="the scorer under load, then `feast serve` under the same load")
    bench_serve.add_argument("--rps", type=POSITIVE, action="append", metavar="R",
                             help="offered requests/s (repeatable; default 2000)")
    bench_serve.add_argument("--duration", type=POSITIVE, default=30, metavar="SECONDS")
    bench_serve.add_argument("--workers", type=POSITIVE_INT, default=1, help="scorer processes")
    bench_serve.add_argument("--shape", type=input_file, default=MULTICAT_SAMPLE,
                             help="REES46 file whose sessions are written to Redis and asked for")
    bench_serve.set_defaults(handler=handlers.bench_serve)

    bench_chaos = benches.add_parser(
        "chaos", help="faults under load: job kills, Redis restarts under the job and the "
        "scorer, Kinesis throttling, scorer overload, a soak")
    bench_chaos.add_argument("--short", action="store_true",
                             help="the quick form (CI): fewer kills, shorter loads")
    bench_chaos.add_argument("--file", type=input_file, default=MULTICAT_SAMPLE,
                             help="REES46 file replayed and served (default: the sample)")
    bench_chaos.add_argument("--only", action="append", choices=CHAOS_SCENARIOS, metavar="SCENARIO",
                             help="run only this scenario (repeatable): "
                                  + ", ".join(CHAOS_SCENARIOS))
    bench_chaos.add_argument(
        "--soak-minutes", type=number(float, SOAK_FULL_S / 60), metavar="M",
        help=f"the soak's length (at least {SOAK_FULL_S / 60:g}; default {SOAK_FULL_S / 60:g}, "
             f"{SOAK_SHORT_S / 60:g} with --short)")
    bench_chaos.set_defaults(handler=handlers.bench_chaos)

    monitor = commands.add_parser(
        "monitor", help="live quality of the served models from the prediction log and the "
        "lake (--day D), or an A/B test's conversion (ab)")
    monitor.add_argument("--day", type=date.fromisoformat, metavar="DATE",
                         help="the day whose predictions to measure (UTC)")
    monitor.add_argument("--no-store", action="store_true",
                         help="print only: neither store the figures nor publish them")
    monitor.add_argument("--json", action="store_true", help="print the figures as JSON")
    monitor.set_defaults(handler=handlers.monitor)
    monitor_commands = monitor.add_subparsers(metavar="ACTION")
    ab = monitor_commands.add_parser(
        "ab", help="conversion per variant, the two-proportion test and the sample size")
    ab.add_argument("--days", type=day_range, required=True, metavar="FROM:TO",
                    help="the experiment's days (inclusive, UTC)")
    ab.add_argument("--lift", type=float, default=0.05,
                    help="relative lift of conversion to size the test for (default 0.05)")
    ab.add_argument("--json", action="store_true", help="print the figures as JSON")
    ab.set_defaults(handler=handlers.monitor_ab)

    demo = commands.add_parser("demo", help="the end-to-end demo on the bundled real sample")
    demo.add_argument("--file", type=input_file, default=MULTICAT_SAMPLE,
                      help="REES46 CSV to replay")
    demo.add_argument("--speed", type=POSITIVE, default=80.0,
                      help="replay at N times the original pace (default 80: the sample's "
                           "3 hours in about 2 minutes)")
    demo.add_argument("--duration", type=POSITIVE, default=150.0, metavar="SECONDS",
                      help="stop each part of the replay (before and after the challenger) "
                           "after this long (default 150)")
    demo.add_argument("--history", type=input_file, action="append", default=[], metavar="FILE",
                      help="earlier REES46 file to import and batch first (repeatable)")
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the demo's stack running at the end")
    demo.set_defaults(handler=handlers.demo)
    return parser


if __name__ == "__main__":
    sys.exit(main())
