"""What each `propensity` command does (ops/cli.py parses the command line and hands each
command its arguments here). Each imports what it runs only when it runs, so `propensity stack
up` stays quick and the bare install's commands work without the extras."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from dataclasses import asdict

from propensity.batch.request import request_of as batch_request
from propensity.commandline import (
    log_to_stderr,
)
from propensity.ops.bench import CHAOS_SCENARIOS
from propensity.rollout import Challenger
from propensity.serving import server
from propensity.settings import Settings
from propensity.streaming.options import options_of as stream_options


class UsageError(ValueError):
    """Options that do not go together."""


def batch(args: argparse.Namespace) -> int:
    from propensity.batch.job import run_and_print

    request = batch_request(args)
    log_to_stderr()
    run_and_print(Settings(), request, args.json)
    return 0


def dataset(args: argparse.Namespace) -> int:
    from propensity.ops.pipelines import DatasetRequest, build_dataset

    log_to_stderr()
    summary = build_dataset(Settings(), DatasetRequest(args.out, args.events,
                                                       tuple(args.history)))
    print(json.dumps(asdict(summary)) if args.json else summary.format())
    return 0


def train(args: argparse.Namespace) -> int:
    from propensity.ops.pipelines import files_data, lake_data
    from propensity.training.train import train

    if args.lake:
        if not (args.train_days and args.valid_days) or args.history:
            raise UsageError("--lake needs --train-days and --valid-days, and no --history")
    elif not args.valid_file or args.train_days or args.valid_days:
        raise UsageError("--train FILE needs --valid FILE (the days are for --lake)")
    log_to_stderr()
    settings = Settings()
    data = (lake_data(settings, args.train_days, args.valid_days) if args.lake else
            files_data(settings, args.train_file, args.valid_file, args.history))
    result = train(settings, data, args.out or settings.home / "training" / "last",
                   register=not args.no_register)
    print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def retrain(args: argparse.Namespace) -> int:
    from propensity.ops.pipelines import retrain_challenger
    from propensity.training.retrain import Retrain

    log_to_stderr()
    settings = Settings()
    result = retrain_challenger(settings, Retrain(args.days, args.valid_days,
                                                  settings.retrain_canary_share, args.out))
    print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from propensity.ops.pipelines import evaluate

    log_to_stderr()
    result = evaluate(Settings(), args.events, args.history, args.model, args.predictions_out)
    if not args.json:
        m = result["metrics"] or {}
        print(f"model {result['model_version']} on {args.events}: ROC AUC "
              f"{m.get('roc_auc')} {m.get('roc_auc_ci95')}; predictions in "
              f"{args.predictions_out}", file=sys.stderr)
    print(json.dumps(result, default=str))
    return 0


def model_list(_: argparse.Namespace) -> int:
    from propensity import model_store

    versions = model_store.list_versions(Settings())
    if not versions:
        print("no stored model versions")
    for v in versions:
        auc = f"{v.validation_auc:.4f}" if v.validation_auc is not None else "n/a"
        print(f"{'*' if v.is_latest else ' '} {v.version}  validation AUC {auc}  checks "
              f"{'passed' if v.checks_passed else 'FAILED'}  {v.trained_on}")
    return 0


def model_status(_: argparse.Namespace) -> int:
    from propensity import model_store

    settings = Settings()
    rollout = model_store.rollout(settings)
    print(f"champion (latest): {rollout.champion or 'none'}")
    _print_lineage(settings, rollout.champion)
    print(f"challenger: {_challenger_text(rollout.challenger)}")
    _print_lineage(settings, rollout.challenger.version if rollout.challenger else None)
    return 0


def _print_lineage(settings: Settings, version: str | None) -> None:
    from propensity import lineage, model_store

    if version is not None:
        record = model_store.metadata_of(settings, version).get("lineage", {})
        for line in lineage.lines(record):
            print(f"  {line}")


def _challenger_text(challenger: Challenger | None) -> str:
    if challenger is None:
        return "none"
    share = f" for {challenger.share:.1%} of the shoppers" if challenger.share else ""
    return f"{challenger.version} in {challenger.mode}{share}"


def model_canary(args: argparse.Namespace) -> int:
    from propensity import model_store

    challenger = model_store.canary(Settings(), args.version, args.share)
    print(f"challenger: {_challenger_text(challenger)}")
    return 0


def model_shadow(args: argparse.Namespace) -> int:
    from propensity import model_store

    print(f"challenger: {_challenger_text(model_store.shadow(Settings(), args.version))}")
    return 0


def model_promote(args: argparse.Namespace) -> int:
    from propensity import model_store

    print(f"latest -> {model_store.promote(Settings(), args.version)}")
    return 0


def model_rollback(_: argparse.Namespace) -> int:
    from propensity import model_store

    rolled = model_store.rollback(Settings())
    if rolled.ended_challenger:
        print(f"challenger {rolled.ended_challenger} ended; {rolled.latest} answers everyone")
    else:
        print(f"latest -> {rolled.latest}")
    return 0


def monitor(args: argparse.Namespace) -> int:
    from propensity.monitoring import live, report

    if args.day is None:
        raise UsageError("monitor needs --day DATE (or the ab action)")
    measured = live.run(Settings(), live.MonitorDay(args.day, store=not args.no_store,
                                                    publish=not args.no_store))
    print(json.dumps(asdict(measured), default=str) if args.json else report.text(measured))
    return 0


def monitor_ab(args: argparse.Namespace) -> int:
    from propensity.monitoring import ab

    first, last = args.days
    result = ab.run(Settings(), ab.AbTest(first, last, args.lift))
    print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def compact(args: argparse.Namespace) -> int:
    from propensity import compaction
    from propensity.lake import Dataset

    log_to_stderr()
    datasets = list(Dataset) if args.dataset == "all" else [Dataset(args.dataset)]
    try:
        done = compaction.compact(Settings(), datasets, args.day)
    except compaction.NotClosed as exc:
        raise UsageError(str(exc)) from None
    for result in done:
        print(json.dumps(asdict(result), default=str) if args.json else result.format())
    return 0


def retention(args: argparse.Namespace) -> int:
    from propensity import retention as retention_rules
    from propensity.lake import Dataset

    datasets = list(Dataset) if args.dataset == "all" else [Dataset(args.dataset)]
    settings = Settings()
    for dataset in datasets:
        days = retention_rules.retention_days(settings, dataset)
        print(f"{dataset}: keeps {f'{days} days' if days else 'everything'}", file=sys.stderr)
    found = retention_rules.apply(settings, datasets, args.today, dry_run=args.dry_run)
    for item in found:
        print(item.format(removed=not args.dry_run))
    if not found:
        print("nothing past its retention", file=sys.stderr)
    return 0


def forget(args: argparse.Namespace) -> int:
    from propensity.privacy.forget import forget as forget_user

    log_to_stderr()
    record = forget_user(Settings(), args.user)
    print(record.to_json() if args.json else record.format())
    return 0


def _api_key(settings: Settings) -> str | None:
    """The scorer's API key, for a smoke test's requests (None: the scorer asks for none)."""
    return settings.serving_api_key.get_secret_value() if settings.serving_api_key else None


def deliver_deploy(args: argparse.Namespace) -> int:
    from propensity import aws
    from propensity.ops import deliver

    log_to_stderr()
    settings = Settings()
    target = deliver.Service(args.cluster, args.service, args.container)
    try:
        done = deliver.deploy(aws.client("ecs", settings), target, args.image,
                              lambda: deliver.smoke(args.smoke_url, _api_key(settings)),
                              args.timeout)
    except deliver.DeliveryError as exc:
        raise UsageError(str(exc)) from None
    print(f"{args.service}: {done.previous} -> {done.current}; smoke test passed")
    return 0


def deliver_smoke(args: argparse.Namespace) -> int:
    from propensity.ops import deliver

    try:
        propensity = deliver.smoke(args.url, _api_key(Settings()))
    except deliver.DeliveryError as exc:
        raise UsageError(str(exc)) from None
    print(f"{args.url}: ready, and /v1/propensity answered {propensity:.4f}")
    return 0


def serve(args: argparse.Namespace) -> int:
    return server.serve(args.host, args.port, args.workers)


def _stack(settings: Settings):
    from propensity.ops.stack import LocalStack

    return LocalStack(settings.home)


def stack_up(_: argparse.Namespace) -> int:
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


def stack_down(_: argparse.Namespace) -> int:
    stopped = _stack(Settings()).down()
    for svc in stopped:
        print(f"stopped {svc.name} (pid {svc.pid})")
    if not stopped:
        print("nothing of ours was running")
    return 0


def stack_status(_: argparse.Namespace) -> int:
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


def stack_provision(_: argparse.Namespace) -> int:
    from propensity import aws

    settings = Settings()
    aws.wait_for_endpoint(settings)
    aws.provision(settings)
    print(f"stream {settings.kinesis_stream} and buckets {', '.join(settings.buckets())} ready")
    return 0


def replay(args: argparse.Namespace) -> int:
    from propensity import aws
    from propensity.kinesis import KinesisWriter, ShardMap, list_shards
    from propensity.ops.replay import replay

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


def stream(args: argparse.Namespace) -> int:
    from propensity.streaming.job import run_or_explain

    log_to_stderr(verbose=args.verbose)
    return run_or_explain(Settings(), stream_options(args))


def bench_stream(args: argparse.Namespace) -> int:
    from propensity.ops.bench.stream import format_table, run_stream_bench

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


def bench_batch(args: argparse.Namespace) -> int:
    from propensity.ops.bench.batch import run_batch_bench

    log_to_stderr()
    print(run_batch_bench(Settings(), args.events, args.days, args.shape).format())
    return 0


def bench_compact(args: argparse.Namespace) -> int:
    from propensity.ops.bench.compact import run_compact_bench

    log_to_stderr()
    print(run_compact_bench(Settings(), args.events, args.micro_batches, args.shape).format())
    return 0


def bench_serve(args: argparse.Namespace) -> int:
    from propensity.ops.bench.serve import run_serve_bench

    print(run_serve_bench(Settings(), args.rps or [2000.0], args.duration, args.shape,
                          args.workers).format())
    return 0


def bench_chaos(args: argparse.Namespace) -> int:
    from propensity.ops.bench.chaos import run_chaos
    from propensity.ops.bench.verdicts import verdict

    outcomes = run_chaos(Settings(), args.file, args.short, tuple(args.only or CHAOS_SCENARIOS),
                         args.soak_minutes and args.soak_minutes * 60)
    print(verdict(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


def demo(args: argparse.Namespace) -> int:
    from propensity.ops.demo import run_demo

    return run_demo(Settings(), args.file, keep_running=args.keep_running, speed=args.speed,
                    duration_s=args.duration, history=args.history)

