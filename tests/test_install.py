"""The install's parts (pyproject.toml's extras): the bare package, as Dockerfile.scorer
installs it into a virtualenv of its own, serves the same propensities as the full install;
commands beyond it say which extra they need; propensity.EXTRAS agrees with pyproject.toml."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from propensity import EXTRAS
from propensity.demo import register_shipped_model
from propensity.live_demo import propensities
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings
from propensity.testing import isolated, load_session_features, running_scorer, session_requests

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ;]", requirement, maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv with the bare package, installed as Dockerfile.scorer installs it."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "-c", str(ROOT / "constraints.txt"), str(ROOT)],
                   check=True, timeout=900, capture_output=True)
    yield venv / "bin"


def test_extras_agree_with_pyproject_and_are_importable_here() -> None:
    extras = PYPROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert {_name(r) for r in extras[extra]} - {"propensity"} == set(modules), extra
        assert all(importlib.util.find_spec(module) for module in modules.values())
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    assert not core & {d for modules in EXTRAS.values() for d in modules}


def test_the_bare_package_serves_what_the_full_install_serves(bare: Path, stack: Settings,
                                                              tmp_path: Path) -> None:
    frozen = subprocess.run([bare / "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout
    installed = {_name(line) for line in frozen.splitlines()}
    left_out = {d for modules in EXTRAS.values() for d in modules}
    assert "feast" in installed and not installed & left_out, installed & left_out

    # The answers are compared, not their speed: a busy machine (make test's two lanes) took
    # the first read past the 20 ms deadline, and a degraded answer is scored without features.
    settings = isolated(stack, tmp_path).model_copy(update={"serving_deadline_ms": 10_000})
    load_session_features(settings, MULTICAT_SAMPLE)
    register_shipped_model(settings)
    requests = session_requests(MULTICAT_SAMPLE)[:100]
    with running_scorer(settings, python=bare / "python") as image_like, \
            running_scorer(settings) as full:
        assert propensities(image_like, requests) == propensities(full, requests)


@pytest.mark.parametrize(("command", "extra"), [
    (["stream", "--until-idle"], "jobs"),
    (["train", "--train", str(MULTICAT_SAMPLE), "--valid", str(MULTICAT_SAMPLE)], "jobs"),
    (["stack", "up"], "local"),
    (["demo"], "local"),
])
def test_commands_beyond_it_name_their_extra(bare: Path, tmp_path: Path, command: list[str],
                                             extra: str) -> None:
    done = subprocess.run([bare / "propensity", *command], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin",
                                            "PROPENSITY_HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("propensity: error:") and "Traceback" not in done.stderr
    assert f"pip install 'propensity[{extra}]'" in done.stderr
