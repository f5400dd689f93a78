"""The install's parts (pyproject.toml's extras): the scorer's image (Dockerfile.scorer: the
bare dependencies, the core, Feast's definitions and the scorer only) serves the same
propensities as the full install; the bare package's commands beyond it say which extra they
need; propensity.ops.EXTRAS agrees with pyproject.toml."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from propensity.ops import EXTRAS
from propensity.ops.demo import register_shipped_model
from propensity.ops.live_demo import propensities
from propensity.ops.testing import isolated, load_session_features, running_scorer, session_requests
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ;]", requirement, maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv with the bare package's dependencies (pyproject.toml's, no extras) pinned
    by the constraints, as Dockerfile.scorer installs them, and the package without
    dependencies, as `pip install propensity` gives it."""
    folder = tmp_path_factory.mktemp("bare")
    venv = folder / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (folder / "requirements.txt").write_text("\n".join(PYPROJECT["dependencies"]))
    for args in (["-c", str(ROOT / "constraints.txt"), "-r", str(folder / "requirements.txt")],
                 ["--no-deps", str(ROOT)]):
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", *args],
                       check=True, timeout=900, capture_output=True)
    yield venv / "bin"


def scorer_image(folder: Path, python: Path) -> Path:
    """Dockerfile.scorer's layout of the code in `folder` (its COPY lines of the code, as
    docker runs them), and an interpreter that runs it as the image does: in the image's
    WORKDIR, with its PYTHONPATH, so the image's copy is the package whatever else the
    environment holds."""
    app = folder / "app"
    for line in (ROOT / "Dockerfile.scorer").read_text().splitlines():
        if line.startswith("COPY ") and not line.endswith(" ./"):
            _, source, target = line.split()
            shutil.copytree(ROOT / source, app / target,
                            ignore=shutil.ignore_patterns("__pycache__"))
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\ncd {app} && PYTHONPATH={app} exec {python} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


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
    image = scorer_image(tmp_path / "image", bare / "python")
    assert not (tmp_path / "image" / "app" / "propensity" / "ops").exists()
    with running_scorer(settings, python=image) as image_like, \
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
