"""What the EMR bootstrap installs beside the wheel: the project's dependencies and its `jobs`
extra, less what the cluster's own Spark provides (pyspark, with its py4j). `make package`
prints it to dist/emr/requirements.txt; constraints.txt pins every version installed.

    python deploy/emr/requirements.py [pyproject.toml]
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

# On the cluster these come from the EMR release's Spark (deploy/emr/runtime.json), never PyPI.
CLUSTER_PROVIDES = frozenset({"pyspark"})


def cluster_requirements(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["jobs"]]
    return [r for r in wanted if Requirement(r).name not in CLUSTER_PROVIDES]


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "pyproject.toml"
    print("\n".join(cluster_requirements(tomllib.loads(path.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
