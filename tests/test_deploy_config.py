"""docker-compose.yml, the Dockerfile and Terraform checked structurally against the settings
(no Docker engine, AWS account or provider download is needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import hcl2
import pytest
import yaml

from propensity.cli import _parser
from propensity.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
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


def test_dockerfile_is_pinned_and_runs_as_non_root() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base)
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    assert any("-c constraints.txt" in line for line in lines)
    # Every package the wheel holds is in the image.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert f"COPY {package} ./{package}" in lines, package


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
    assert outputs and outputs <= Settings.env_names()


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
