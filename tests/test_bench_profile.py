"""The profile summary (propensity.ops.bench.profile) reads py-spy's and JFR's output as they are:
py-spy's raw lines from a real recording, a flight recording made here by the JDK."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from propensity.ops.bench.cpu import JVM, PYTHON_MAIN, PYTHON_WORKERS
from propensity.ops.bench.profile import _OURS, _jfr_json, java_packages, read_jfr, read_py_spy

# Two lines of a `bench stream --profile` recording (process chain, frames, count), shortened.
PY_SPY = [
    'process 1:"/v/bin/python3 -m propensity.ops.cli stream";process 2:"/usr/bin/java -cp x '
    'org.apache.spark.deploy.SparkSubmit";process 3:"/v/bin/python3 -m pyspark.daemon '
    'pyspark.worker";main (pyspark/worker.py:4364);write_partitions (streaming/sinks.py:131);'
    'write_latest (/r/feature_repo/online.py:64);online_write_batch (/v/lib/python3.11/'
    'site-packages/feast/infra/online_stores/redis.py:250) 7',
    'process 1:"/v/bin/python3 -m propensity.ops.cli stream";run (threading.py:982) 3',
    "not a stack line",
]


def test_py_spy_stacks_are_read_by_process_kind_and_own_functions() -> None:
    stacks = read_py_spy(PY_SPY)
    assert stacks.total == 10
    assert stacks.kinds == {PYTHON_WORKERS: 7, PYTHON_MAIN: 3}
    assert stacks.self_top(1) == [("online_write_batch (feast/infra/online_stores/redis.py)", 7)]
    assert dict(stacks.inclusive_top(_OURS)) == {
        "write_partitions (streaming/sinks.py)": 7, "write_latest (feature_repo/online.py)": 7}
    printed = stacks.format("Python", ours=_OURS)
    assert "Python workers 70.0%" in printed and "write_latest" in printed


@pytest.mark.timeout(300)
def test_a_real_flight_recording_is_read(tmp_path: Path) -> None:
    busy = tmp_path / "Busy.java"
    busy.write_text(textwrap.dedent("""
        public class Busy {
            static double spin(long until) {
                double x = 0;
                while (System.nanoTime() < until) { x += Math.sqrt(x + 1); }
                return x;
            }
            public static void main(String[] a) {
                System.out.println(spin(System.nanoTime() + 3_000_000_000L));
            }
        }"""))
    recording = tmp_path / "busy.jfr"
    subprocess.run(["java", f"-XX:StartFlightRecording=filename={recording},settings=profile",
                    str(busy)], check=True, capture_output=True, timeout=240, cwd=tmp_path)
    stacks = read_jfr(_jfr_json(recording))
    assert stacks.kinds[JVM] == stacks.total > 10
    assert any("Busy.spin" in frame for frame, _ in stacks.self_top(3)), stacks.self_top(3)
    assert java_packages(stacks).total == stacks.total


def test_the_summary_command_refuses_what_is_not_a_profile_folder(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "propensity.ops.bench.profile",
                           str(tmp_path / "none")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
