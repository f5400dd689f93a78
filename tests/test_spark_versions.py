"""Which Spark the tests run on, and the PySpark behaviour the jobs rely on where versions
differ: the local pin (pyproject.toml's jobs extra) and the EMR runtime's (deploy/emr/runtime.json,
`make test-emr`). These fail loudly when a PySpark upgrade changes what the code assumes."""

from __future__ import annotations

import importlib
import io
import json
import os
import struct
import tomllib
import zipfile
from pathlib import Path

import pyspark
from packaging.requirements import Requirement
from packaging.version import Version
from pyspark.sql import GroupedData

from propensity.spark import STATE_SERVERS
from propensity.streaming.kinesis_options import SourceOptions
from propensity.streaming.kinesis_source import KinesisStreamReader

ROOT = Path(__file__).resolve().parents[1]
EMR_RUNTIME = json.loads((ROOT / "deploy" / "emr" / "runtime.json").read_text())


def _at_least(version: str) -> bool:
    return Version(pyspark.__version__) >= Version(version)


def _local_pin() -> str:
    jobs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["jobs"]
    (spec,) = [Requirement(r).specifier for r in jobs if Requirement(r).name == "pyspark"]
    (pin,) = spec
    return pin.version


def test_pyspark_is_the_one_this_run_declares() -> None:
    """`make test-emr` declares the runtime's version; a plain run is on the local pin."""
    expected = os.environ.get("PROPENSITY_EXPECT_PYSPARK") or _local_pin()
    assert pyspark.__version__ == expected
    assert pyspark.__version__ in (_local_pin(), EMR_RUNTIME["pyspark"])


def test_the_source_runner_calls_latest_offset_as_the_reader_expects() -> None:
    """KinesisStreamReader.latestOffset(start=None, limit=None) serves both APIs: 4.2+ sees
    its parameters (admission control) and passes the start; 4.0 calls it bare."""
    runner = importlib.import_module("pyspark.sql.streaming.python_streaming_source_runner")
    assert hasattr(runner, "check_support_func") == (_at_least("4.2"))
    if _at_least("4.2"):
        reader = KinesisStreamReader(SourceOptions(stream="s", region="us-east-1"))
        out = io.BytesIO()
        runner.check_support_func(reader, out)
        (flags,) = struct.unpack(">i", out.getvalue())
        assert flags & runner.SUPPORTS_ADMISSION_CONTROL
        assert not flags & runner.SUPPORTS_TRIGGER_AVAILABLE_NOW  # until idle is the job's
    else:
        calls: list[tuple] = []

        class Recorder:
            def latestOffset(self, *args: object) -> dict:
                calls.append(args)
                return {}

        runner.latest_offset_func(Recorder(), io.BytesIO())
        assert calls == [()]


def test_the_stateful_operator_exists_on_both() -> None:
    """transformWithStateInPandas is the one operator of both versions (README, "Why this
    stateful operator"); the rows form only came with 4.1."""
    assert hasattr(GroupedData, "transformWithStateInPandas")
    assert hasattr(GroupedData, "transformWithState") == (_at_least("4.1"))


def test_one_of_the_state_server_names_is_this_sparks() -> None:
    """propensity.spark quiets the state server by its class name, renamed in 4.1."""
    (jar,) = (Path(pyspark.__file__).parent / "jars").glob("spark-sql_*.jar")
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
    present = [c for c in STATE_SERVERS if c.replace(".", "/") + ".class" in names]
    assert len(present) == 1, present
