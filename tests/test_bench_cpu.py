"""CPU by role for the stream bench: the arithmetic on samples, and the process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from propensity.ops.bench.cpu import (
    DRIVER,
    EXECUTORS,
    JIT,
    JVM,
    PYTHON_MAIN,
    PYTHON_WORKERS,
    kind_of,
    roles,
    used,
)


def test_cpu_used_between_two_moments_by_role() -> None:
    jvm, workers = f"{DRIVER}/{JVM}", f"{EXECUTORS}/{PYTHON_WORKERS}"
    samples = [
        (10.0, {1: (jvm, 5.0), 2: (workers, 1.0)}),
        (11.0, {1: (jvm, 6.0), 2: (workers, 3.0), 3: (workers, 0.5)}),
        (12.0, {1: (jvm, 6.5), 3: (workers, 2.5)}),  # 2 has ended: it keeps 3.0
    ]
    assert used(samples, DRIVER, 10.0, 12.0) == used(samples, jvm, 10.0, 12.0) == 1.5
    assert used(samples, EXECUTORS, 10.0, 12.0) == 2.0 + 2.5  # 3 started after t0: from 0
    assert used(samples, EXECUTORS, 10.5, 11.5) == 2.0 + 0.5
    assert used(samples, DRIVER, 0.0, 9.0) == 0.0
    assert used(samples, f"{DRIVER}/{PYTHON_MAIN}", 10.0, 12.0) == 0.0


def test_a_jvms_compiler_threads_count_apart_and_not_twice() -> None:
    jvm, jit = f"{DRIVER}/{JVM}", f"{JIT}:{DRIVER}"
    samples = [(10.0, {1: (jvm, 5.0), "1/7": (jit, 2.0), "1/8": (jit, 1.0)}),
               (11.0, {1: (jvm, 7.0), "1/7": (jit, 3.5)})]  # thread 8 ended: keeps 1.0
    assert used(samples, DRIVER, 10.0, 11.0) == 2.0  # the process's own total only
    assert used(samples, jit, 10.0, 11.0) == 1.5


def test_a_real_jvms_compiler_threads_are_found(tmp_path) -> None:
    source = tmp_path / "Busy.java"
    source.write_text("public class Busy { public static void main(String[] a) { long s = 0; "
                      "long end = System.nanoTime() + 4_000_000_000L; while (System.nanoTime() "
                      "< end) { for (int i = 0; i < 1000; i++) s += Long.toString(i).hashCode(); }"
                      " System.out.println(s); } }")
    java = subprocess.Popen(["java", str(source)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(2.5)  # the source launcher compiles Busy in the JVM: its JIT is busy
        found = roles(psutil.Process(os.getpid()))
        assert found[java.pid][0] == f"{DRIVER}/{JVM}"
        compiled = {k: v for k, v in found.items() if str(k).startswith(f"{java.pid}/")}
        assert compiled and {role for role, _ in compiled.values()} == {f"{JIT}:{DRIVER}"}
        assert 0 < sum(seconds for _, seconds in compiled.values()) <= found[java.pid][1]
    finally:
        java.kill()
        java.wait()


def test_an_executor_jvm_and_its_children_count_as_executors() -> None:
    """A stand-in process tree: a child whose command line names Spark's executor backend,
    with a busy child of its own, under this (driver) process."""
    busy = ("import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\ntime.sleep(5)")
    executor = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               f"{busy!r}]); import time; time.sleep(5)",
         "org.apache.spark.executor.CoarseGrainedExecutorBackend"])
    try:
        time.sleep(1.5)
        found = roles(psutil.Process(os.getpid()))
        assert found[os.getpid()][0] == f"{DRIVER}/{PYTHON_MAIN}"
        assert found[executor.pid][0] == f"{EXECUTORS}/{PYTHON_MAIN}"
        grandchildren = [p.pid for p in psutil.Process(executor.pid).children()]
        assert grandchildren and all(found[pid][0].startswith(EXECUTORS) for pid in grandchildren)
        assert sum(found[pid][1] for pid in grandchildren) >= 0.25
    finally:
        executor.kill()
        executor.wait()


def test_process_kinds_by_command_line() -> None:
    assert kind_of(["/usr/lib/jvm/bin/java", "-cp", "x", "org.apache.spark.deploy.SparkSubmit"]
                   ) == JVM
    assert kind_of(["/venv/bin/python", "-m", "pyspark.daemon", "pyspark.worker"]) == PYTHON_WORKERS
    assert kind_of(["/venv/bin/python", "-m", "propensity.ops.cli", "stream"]) == PYTHON_MAIN
    assert kind_of([]) == PYTHON_MAIN
