"""docker-compose.yml, the Dockerfile and Terraform checked structurally against the settings
(no Docker engine, AWS account or provider download is needed)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import hcl2
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from propensity.ops.cli import _parser
from propensity.samples import COSMETICS_NOVEMBER, COSMETICS_OCTOBER, MULTICAT_SAMPLE
from propensity.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# What the scorer needs of the package: the core, Feast's definitions, the scorer.
SCORER_PACKAGES = ("propensity", "propensity.feature_repo", "propensity.serving")
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if svc.get("image", "").startswith("propensity")]


def _container_port(service: str) -> int:
    (mapping,) = SERVICES[service]["ports"]
    return int(mapping.rsplit(":", 1)[1])


def test_compose_has_the_topology() -> None:
    assert {"redis", "aws", "provision", "stream", "scorer", "replayer"} <= SERVICES.keys()
    assert set(OURS) == {"provision", "stream", "scorer", "replayer"}
    for name, svc in SERVICES.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
        for mapping in svc.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), f"{name}: publish on loopback only"


def test_compose_settings_are_the_settings_module() -> None:
    for name in OURS:
        env = SERVICES[name]["environment"]
        assert set(env) == Settings.env_names(), name
        settings = Settings(**env)
        endpoint = urlparse(settings.aws_endpoint_url)
        assert endpoint.hostname in SERVICES and endpoint.port == _container_port(
            endpoint.hostname)
        host, port = settings.redis.split(",")[0].rsplit(":", 1)
        assert host in SERVICES and int(port) == _container_port(host)


def _is_command(name: str) -> bool:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args([name, "--help"])
    return exit_.value.code == 0


def test_compose_commands_exist(capsys: pytest.CaptureFixture[str]) -> None:
    assert not _is_command("no-such-command")
    for name in OURS:
        program, command, *args = SERVICES[name]["command"]
        assert program == "propensity"
        assert _is_command(command), f"{name}: {command}?"
        for arg in args:
            if arg.endswith(".csv.gz"):
                assert (ROOT / arg).exists(), arg


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.scorer"])
def test_dockerfile_is_pinned_and_runs_as_non_root(dockerfile: str) -> None:
    lines = (ROOT / dockerfile).read_text().splitlines()
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base)
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    assert any("-c constraints.txt" in line for line in lines)
    # The full image holds every folder the wheel maps under `propensity`; the scorer's, the
    # core, Feast's definitions and the scorer only, laid out as the installed package.
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    copied = {line.split()[1]: line.split()[2] for line in lines if line.startswith("COPY ")}
    if dockerfile == "Dockerfile":
        top = {folder.split("/")[0] for folder in folders.values()}
        assert all(copied.get(folder) == f"./{folder}" for folder in top), copied
    else:
        assert {folder: copied[folder] for folder in copied if folder in folders.values()} == {
            folder: "./" + package.replace(".", "/") for package, folder in folders.items()
            if package in SCORER_PACKAGES}


def _blocks(kind: str) -> list[tuple[str, dict]]:
    """(label, body) of every `kind` block in terraform/*.tf; labels without quotes."""
    found = []
    for path in sorted((ROOT / "terraform").glob("*.tf")):
        with open(path) as handle:
            for block in hcl2.load(handle).get(kind, []):
                found.extend((label.strip('"'), body) for label, body in block.items())
    return found


def _typed_names(kind: str) -> set[str]:
    """`type.name` of every resource or data block."""
    return {f"{kind_}.{name.strip(chr(34))}" for kind_, bodies in _blocks(kind)
            for name in bodies}


def test_terraform_outputs_are_named_like_the_settings() -> None:
    outputs = {label for label, _ in _blocks("output")}
    settings_like = {name for name in outputs if name.isupper()}
    assert settings_like <= Settings.env_names()
    # Where the deployed code must be pointed (the rest are local-only or tuning defaults).
    assert settings_like == {
        "AWS_DEFAULT_REGION", "PROPENSITY_KINESIS_STREAM", "PROPENSITY_REDIS",
        "PROPENSITY_EVENTS_URI", "PROPENSITY_QUARANTINE_URI", "PROPENSITY_FEATURES_URI",
        "PROPENSITY_MODELS_URI", "PROPENSITY_FEAST_REGISTRY", "PROPENSITY_CHECKPOINT_DIR",
        "PROPENSITY_SPARK_MASTER", "PROPENSITY_METRICS_NAMESPACE", "PROPENSITY_PREDICTIONS_URI",
        "PROPENSITY_MONITORING_URI"}


def _alarm_metrics() -> dict[str, set[tuple[str, str]]]:
    """(namespace, metric name) of every CloudWatch alarm, by alarm, with for_each maps and
    dynamic metric queries resolved (python-hcl2 keeps strings' quotes)."""
    locals_ = dict(_blocks("locals"))

    def strip(value: str) -> str:
        return value.strip('"')

    def each_values(body: dict) -> list[dict]:
        found = body.get("for_each")
        if isinstance(found, str) and found.startswith("${local."):
            found = locals_[found[len("${local."):-1]]
        return list(found.values()) if isinstance(found, dict) else [{}]

    def resolve(name: str, each: dict, query_values: list[str]) -> list[str]:
        if name == "${metric_query.value}":
            return [v for q in query_values for v in resolve(q, each, [])]
        if name.startswith("${each.value."):
            return [strip(each[name[len("${each.value."):-1]])]
        return [strip(name)]

    found: dict[str, set[tuple[str, str]]] = {}
    for kind, block in _blocks("resource"):
        if kind != "aws_cloudwatch_metric_alarm":
            continue
        for alarm, body in block.items():
            metrics = found.setdefault(strip(alarm), set())
            for each in each_values(body):
                queries = [(metric, []) for query in body.get("metric_query", [])
                           for metric in query.get("metric", [])]
                for dynamic in body.get("dynamic", []):
                    spec = dynamic.get('"metric_query"') or dynamic.get("metric_query")
                    values = list(spec["for_each"].values())
                    queries += [(metric, values) for content in spec["content"]
                                for metric in content["metric"]]
                if "metric_name" in body:
                    queries.append((body, []))
                for metric, values in queries:
                    for name in resolve(metric["metric_name"], each, values):
                        metrics.add((metric["namespace"], name))
    return found


def test_every_alarm_watches_a_metric_the_code_publishes_under_that_name() -> None:
    from propensity import cloudwatch
    from propensity.monitoring import live

    published = (set(cloudwatch.UNITS) | {name for name, _ in live.CLOUDWATCH_METRICS.values()}
                 | set(live.DRIFT_METRICS.values()))
    ours = {alarm: {name for namespace, name in metrics
                    if namespace == "${local.metrics_namespace}"}
            for alarm, metrics in _alarm_metrics().items()}
    for alarm, names in ours.items():
        assert names <= published, (alarm, names - published)
    # The scorer's, the batch's, the stream's and the monitor's alarms are all there.
    assert {name for names in ours.values() for name in names} >= {
        cloudwatch.DEGRADED_ANSWERS, cloudwatch.ANSWERS, cloudwatch.SHED_REQUESTS,
        cloudwatch.SCORING_REQUESTS, cloudwatch.SESSION_FEATURE_AGE_S,
        cloudwatch.DAILY_BATCH_SUCCEEDED, cloudwatch.STREAMING_BATCH_DURATION_MS,
        live.CLOUDWATCH_METRICS["auc_ratio"][0], *live.DRIFT_METRICS.values()}
    # AWS's own metrics for the rest: the ALB's latency and 5xx, Kinesis's iterator age.
    assert {name for metrics in _alarm_metrics().values() for namespace, name in metrics
            if namespace.startswith('"AWS/')} == {
        "TargetResponseTime", "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count",
        "RequestCount", "GetRecords.IteratorAgeMilliseconds"}
    # The scorer sends its metrics with the namespace the alarms read.
    scorer_settings = dict(_blocks("locals"))["scorer_settings"]
    assert scorer_settings["PROPENSITY_METRICS_NAMESPACE"] == "${local.metrics_namespace}"


def test_terraform_keeps_each_dataset_where_and_as_long_as_the_code_does() -> None:
    from propensity.lake import Dataset, dataset_uri
    from propensity.settings import RETENTION_DAYS

    names = {d.value for d in Dataset}
    locals_ = dict(_blocks("locals"))
    datasets, node = locals_["datasets"], locals_["node_settings"]
    assert set(datasets) == set(RETENTION_DAYS) == names
    main = (ROOT / "terraform" / "main.tf").read_text()
    assert 'jsondecode(file("${path.module}/../propensity/retention_days.json"))' in main
    assert 'prefix = "${rule.value.folder}/"' in main
    settings = Settings()
    for dataset in Dataset:
        # The code's default and terraform's are the JSON's; EMR's jobs get terraform's.
        field = Settings.model_fields[f"{dataset.value}_retention_days"]
        assert getattr(settings, f"{dataset.value}_retention_days") == RETENTION_DAYS[
            dataset.value]
        assert node[field.alias] == f"${{tostring(local.retention_days.{dataset.value})}}"
        # The dataset's folder is the one the code's setting names (the bucket aside).
        folder = datasets[dataset.value]["folder"].strip('"')
        assert urlparse(dataset_uri(settings, dataset)).path == f"/{folder}"
        uri_setting = {Dataset.LAKE: "PROPENSITY_EVENTS_URI",
                       Dataset.ARCHIVE: "PROPENSITY_FEATURES_URI",
                       Dataset.QUARANTINE: "PROPENSITY_QUARANTINE_URI",
                       Dataset.PREDICTIONS: "PROPENSITY_PREDICTIONS_URI"}[dataset]
        assert node[uri_setting] == f"${{local.dataset_uris.{dataset.value}}}"


def test_the_quality_and_drift_alarms_read_what_the_monitor_publishes() -> None:
    from propensity import drift
    from propensity.monitoring import live
    from propensity.rollout import CHAMPION

    def plain(value: object) -> object:  # python-hcl2 keeps the quotes of strings
        if isinstance(value, dict):
            return {k.strip('"'): plain(v) for k, v in value.items()}
        return value.strip('"') if isinstance(value, str) else value

    alarms = {name.strip('"'): plain(body) for kind, block in _blocks("resource")
              if kind == "aws_cloudwatch_metric_alarm" for name, body in block.items()}
    auc = alarms["live_auc"]
    assert auc["metric_name"] == live.CLOUDWATCH_METRICS["auc_ratio"][0]
    assert auc["threshold"] == live.AUC_ALARM_RATIO
    assert auc["evaluation_periods"] == auc["datapoints_to_alarm"] == 2  # two days running
    assert auc["dimensions"] == {"Variant": CHAMPION}
    rules = alarms["drift"]["for_each"]
    assert {rule["metric"]: rule["threshold"] for rule in rules.values()} == {
        live.DRIFT_METRICS["feature"]: drift.FEATURE_PSI_FLAG,
        live.DRIFT_METRICS["score"]: drift.SCORE_PSI_FLAG}


def test_terraform_references_resolve() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "terraform").glob("*.tf"))
    locals_ = {label for label, _ in _blocks("locals")}
    assert set(re.findall(r"\bvar\.(\w+)", text)) <= {label for label, _ in _blocks("variable")}
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= locals_
    assert set(re.findall(r"(?<![.\w])(aws_\w+\.\w+)", text)) <= _typed_names("resource")
    assert set(re.findall(r"\bdata\.(aws_\w+\.\w+)", text)) <= _typed_names("data")


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary")
def test_terraform_fmt() -> None:
    done = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(ROOT / "terraform")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scorer_image_has_no_java_and_serves() -> None:
    text = (ROOT / "Dockerfile.scorer").read_text()
    assert "openjdk" not in text and "HEALTHCHECK" in text
    assert '["python", "-m", "propensity.serving", "--host", "0.0.0.0", "--port", "8000"]' in text
    # ECS runs the image's own command (the image has no `propensity` CLI), on its port.
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)
    task = re.search(r"^\s*command\s*=\s*\[(.*)\]$", (ROOT / "terraform" / "scorer.tf").read_text(),
                     re.MULTILINE)
    assert task, "terraform/scorer.tf: no container command"
    parts = [part.strip().strip('"') for part in task.group(1).split(",")]
    assert parts[:-1] == json.loads(cmd)[:-1] and parts[-1] == "tostring(local.scorer_port)"
    # The load balancer drops an idle connection before the scorer does (else: 502s).
    from propensity.serving.server import KEEP_ALIVE_S

    (balancer,) = [body for kind, block in _blocks("resource") if kind == "aws_lb"
                   for name, body in block.items() if name.strip('"') == "scorer"]
    assert balancer["idle_timeout"] < KEEP_ALIVE_S


CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


@pytest.mark.skipif(not CHECKOV.exists(), reason="no .venv-checkov: `make test` installs it")
def test_checkov_finds_no_failed_check_and_every_skip_says_why() -> None:
    runs = [["-d", str(ROOT / "terraform"), "--framework", "terraform"],
            ["-f", str(ROOT / "Dockerfile"), "-f", str(ROOT / "Dockerfile.scorer"),
             "--framework", "dockerfile"]]
    for args in runs:
        done = subprocess.run([str(CHECKOV), *args, "--quiet", "--compact", "--skip-download"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for path in [*(ROOT / "terraform").glob("*.tf"), ROOT / "Dockerfile"]:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.search(r"#checkov:skip=CKV2?_\w+:\S.{20,}", line), f"{path}: {line}"


def test_make_package_builds_what_the_emr_bootstrap_and_steps_read(tmp_path: Path) -> None:
    done = subprocess.run(["make", "-s", "package"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    emr = ROOT / "dist" / "emr"
    (wheel,) = emr.glob("propensity-*.whl")
    assert {p.name for p in emr.iterdir()} == {wheel.name, "constraints.txt", "bootstrap.sh",
                                              "run-step.sh", "requirements.txt"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        # One top-level name: the repository's folders are the package's floors.
        assert {top for top in (name.split("/")[0] for name in names)
                if not top.endswith(".dist-info")} == {"propensity"}
        assert {"propensity/streaming/job.py", "propensity/batch/job.py",
                "propensity/serving/app.py", "propensity/training/train.py",
                "propensity/feature_repo/feature_store.yaml"} <= names
        # spark-submit entry points: the two jobs, and the operator's CLI (the retrain step
        # runs the batch, then the retraining)
        for module in ("streaming/job.py", "batch/job.py", "ops/cli.py"):
            assert "def main(" in archive.read(f"propensity/{module}").decode()
        # The commit it was built from (an EMR node has no git): models trained there say so.
        built = json.loads(archive.read("propensity/build_info.json"))
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert built["commit"] == head and isinstance(built["dirty"], bool)
    assert not (ROOT / "propensity" / "build_info.json").exists()  # the work tree keeps none
    for script in ("bootstrap.sh", "run-step.sh"):
        assert subprocess.run(["bash", "-n", str(emr / script)]).returncode == 0

    # Terraform passes the bootstrap its three arguments and runs the wrapper's two steps.
    emr_tf = (ROOT / "terraform" / "emr.tf").read_text()
    bootstrap = (emr / "bootstrap.sh").read_text()
    assert 'artifacts="$1" secret_arn="$2" region="$3"' in bootstrap
    assert re.search(r"Args = \[local\.artifacts, [^,\]]+, [^,\]]+\]", emr_tf)
    wrapper = (emr / "run-step.sh").read_text()
    for step in set(re.findall(r'"/usr/local/propensity/run-step.sh", "(\w+)"', emr_tf)):
        assert f"  {step})" in wrapper, step
    usage = subprocess.run(["bash", str(emr / "run-step.sh"), "nonsense"], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin"})
    assert usage.returncode == 2
    assert "usage: run-step.sh stream|batch|monitor|retrain" in usage.stderr

    # The cluster's Spark provides pyspark: the bootstrap installs the wheel without its
    # dependencies, then everything the jobs need except pyspark, pinned by the constraints.
    requirements = (emr / "requirements.txt").read_text().split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirements == [r for r in (*project["dependencies"],
                                        *project["optional-dependencies"]["jobs"])
                            if Requirement(r).name != "pyspark"]
    assert "pyspark" not in _closure(requirements)
    assert 'pip install -q --no-deps "$wheel"' in bootstrap
    assert '-c "$work/constraints.txt" -r "$work/requirements.txt"' in bootstrap
    assert "[jobs]" not in bootstrap
    for named in ("Kinesis source", "EMRFS", "RocksDBStateStoreProvider", "checkpoints on S3",
                  "runtime.json"):
        assert named in bootstrap, named
    # ... and the steps run on it: its spark-submit, on YARN, the entry point found by path
    # (importing it would need pyspark outside spark-submit).
    assert "SPARK_SUBMIT=/usr/bin/spark-submit" in wrapper
    assert wrapper.count('"$SPARK_SUBMIT" --master yarn') == 3
    assert re.search(r"^\s*spark-submit ", wrapper, re.MULTILINE) is None
    assert "find_spec" in wrapper and "import $1" not in wrapper


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, as installed here (markers and extras
    followed)."""
    seen: set[tuple[str, frozenset]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e})
                                                for e in extras):
                todo.append(dependency)
    return {name for name, _ in seen}


EMR_RUNTIME = ROOT / "deploy" / "emr" / "runtime.json"


def test_terraform_and_the_tests_use_one_emr_runtime() -> None:
    """deploy/emr/runtime.json is the one definition: terraform's release label for both
    clusters, the Makefile's pyspark for the second test run (tests/test_spark_versions.py
    checks that run is on it)."""
    runtime = json.loads(EMR_RUNTIME.read_text())
    # EMR on EC2's labels: emr-7.5.0 (Spark 3.5), emr-spark-8.0.0 (Spark 4.0.2).
    assert re.fullmatch(r"emr-(spark-)?\d+\.\d+\.\d+", runtime["release_label"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", runtime["pyspark"])
    assert "emr_release" not in {label for label, _ in _blocks("variable")}
    assert dict(_blocks("locals"))["emr_runtime"] == (
        '${jsondecode(file("${path.module}/../deploy/emr/runtime.json"))}')
    emr_tf = (ROOT / "terraform" / "emr.tf").read_text()
    assert re.findall(r"(?i)release_?label\s*=\s*(\S+)", emr_tf) == [
        "local.emr_runtime.release_label"] * 2
    makefile = (ROOT / "Makefile").read_text()
    assert "EMR_RUNTIME := deploy/emr/runtime.json" in makefile
    assert '["pyspark"]' in makefile and "PROPENSITY_EXPECT_PYSPARK=$(EMR_PYSPARK)" in makefile


def test_a_clone_needs_nothing_beside_it() -> None:
    """No tracked file reads a folder outside the repository (a clone has no ../shared), and
    every bundled real slice the tests and the README name is in the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.split()
    outside = re.compile(r'\.\./shared|"shared" /')
    readers = [name for name in tracked if name.endswith((".py", ".md", ".sh", ".yml", ".toml",
                                                          "Makefile", ".tf", "run"))
               and outside.search((ROOT / name).read_text(errors="replace"))
               and name != "tests/test_deploy_config.py"]
    assert readers == [], readers
    for path in (MULTICAT_SAMPLE, COSMETICS_OCTOBER, COSMETICS_NOVEMBER):
        assert str(path.relative_to(ROOT)) in tracked, path
