"""Where a model version came from, recorded in its metadata (`lineage`) when it is trained:
the code (git commit, and whether the work tree had changes), the training data's identity
(the lake's days and a digest of the objects read, or the input files' digests), the feature
definitions' digest and the library versions. `propensity model status` shows it; the model
card prints it.

The code's identity comes from git when the package runs from a work tree, else from the
`build_info.json` that `make package` writes into the wheel (an EMR node has no git), else it
is recorded as unknown.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from propensity import features

BUILD_INFO = Path(__file__).with_name("build_info.json")
# The libraries whose versions decide what a model is and how it was trained.
LIBRARIES = ("propensity", "lightgbm", "numpy", "pandas", "pyarrow", "scikit-learn",
             "pyspark", "feast", "dask")
UNKNOWN = "unknown"


def file_hash(path: str | Path, digest: Any) -> str:
    """The hex digest of a file's bytes, fed to `digest` (a hashlib object) a MB at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_hash(path, hashlib.sha256())


def objects_sha256(objects: Iterable[tuple[str, int]]) -> str:
    """A digest of a set of stored objects by path and size (objects are written once under a
    name, or rewritten whole: a changed object changes its size or the set)."""
    digest = hashlib.sha256()
    for path, size in sorted(objects):
        digest.update(f"{path}\0{size}\n".encode())
    return digest.hexdigest()


def features_sha256() -> str:
    """The digest of the feature definitions (propensity/features.py: every feature, defined
    once for streaming, batch, training and serving)."""
    return file_sha256(features.__file__)


def git_identity(folder: Path) -> dict | None:
    """{"commit", "dirty"} of the work tree holding `folder`; None outside one (or no git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def code_identity() -> dict:
    """The code that runs: {"commit", "dirty", "source": "git" | "build" | "unknown"}."""
    found = git_identity(Path(__file__).parent)
    if found is not None:
        return {**found, "source": "git"}
    if BUILD_INFO.exists():
        return {**json.loads(BUILD_INFO.read_text()), "source": "build"}
    return {"commit": UNKNOWN, "dirty": None, "source": UNKNOWN}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def lineage(data: dict) -> dict:
    """A version's lineage, for the training data identified by `data`."""
    return {"code": code_identity(), "data": data, "features_sha256": features_sha256(),
            "libraries": library_versions()}


def lines(record: dict) -> list[str]:
    """A lineage as text lines (the model card, `propensity model status`)."""
    if not record:
        return ["no lineage recorded (trained before lineage was kept)"]
    code = record["code"]
    state = {True: " (with uncommitted changes)", False: "", None: ""}[code.get("dirty")]
    data = record["data"]
    found = [f"code: {code['commit']}{state} (from {code['source']})"]
    if data.get("kind") == "lake":
        found.append(f"data: the lake, days {data['first_day']} .. {data['last_day']}, "
                     f"{data['objects']} objects, sha256 {data['objects_sha256']}")
    else:
        found += [f"data: {name} sha256 {digest}" for name, digest in data["files"].items()]
    found.append(f"feature definitions: sha256 {record['features_sha256']}")
    found.append("libraries: " + ", ".join(f"{k} {v}" for k, v in record["libraries"].items()))
    return found


def write_build_info(path: Path = BUILD_INFO) -> dict:
    """Records the work tree's commit for a package built from it (`make package`)."""
    found = git_identity(path.parent) or {"commit": UNKNOWN, "dirty": None}
    path.write_text(json.dumps(found))
    return found


if __name__ == "__main__":  # `make package`: python -m propensity.lineage
    print(json.dumps(write_build_info()))
