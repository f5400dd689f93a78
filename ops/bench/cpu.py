"""CPU seconds of a Spark job's processes, by role: the driver (the Python driver, its JVM,
the Python data source's planning process) or the executors (executor JVMs and their Python
workers). In `local[N]` everything runs in the driver's JVM; in `local-cluster[N,C,MB]`, as on
a cluster, executors are JVMs of their own (CoarseGrainedExecutorBackend), launched by the
standalone workers inside the driver's JVM.

A sampler thread reads the process tree every `interval_s`; `used(role, t0, t1)` is the CPU
that role's processes spent between two moments (a process that ends between samples loses
at most one interval of its time).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DRIVER, EXECUTORS = "driver", "executors"
_EXECUTOR_MAIN = "CoarseGrainedExecutorBackend"


# What a process of the job is, within its role.
JVM, PYTHON_MAIN, PYTHON_WORKERS = "JVM", "Python main", "Python workers"
KINDS = (JVM, PYTHON_MAIN, PYTHON_WORKERS)
# A JVM's just-in-time compiler threads (HotSpot's "C1 CompilerThread0", "C2 CompilerThread1";
# Linux keeps 15 characters of a thread's name), counted apart as "JIT:<role>": the
# compiler works hardest in a JVM's first minutes, so in a short measured window its share
# says how far the JVM is from its steady state.
JIT = "JIT"
_COMPILER_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def kind_of(command_line: list[str]) -> str:
    """A JVM, a Python worker started by Spark (`python -m pyspark.<module>`: tasks, forked by
    pyspark's daemon; on the driver also the data source's planner), or another Python process
    (the job's own driver)."""
    if command_line and command_line[0].endswith("java"):
        return JVM
    started_by_spark = any(a == "-m" and b.startswith("pyspark.")
                           for a, b in itertools.pairwise(command_line))
    return PYTHON_WORKERS if started_by_spark else PYTHON_MAIN


def roles(root: psutil.Process) -> dict[int | str, tuple[str, float]]:
    """{pid: (role, CPU seconds so far)} for `root` and all its descendants; the role is
    DRIVER or EXECUTORS, followed by "/" and the process's kind. A JVM's compiler threads are
    also there, apart, as {"pid/tid": ("JIT:" + role, CPU seconds so far)} (a thread that
    ends keeps its last reading, as a process does)."""
    found: dict[int | str, tuple[str, float]] = {}
    stack = [(root, DRIVER)]
    while stack:
        process, role = stack.pop()
        with contextlib.suppress(psutil.Error):
            command_line = process.cmdline()
            if role == DRIVER and _EXECUTOR_MAIN in " ".join(command_line):
                role = EXECUTORS
            times = process.cpu_times()
            kind = kind_of(command_line)
            found[process.pid] = (f"{role}/{kind}", times.user + times.system)
            if kind == JVM:
                found.update({f"{process.pid}/{tid}": (f"{JIT}:{role}", seconds)
                              for tid, seconds in compiler_threads(process.pid).items()})
            stack.extend((child, role) for child in process.children())
    return found


def compiler_threads(pid: int) -> dict[int, float]:
    """{thread id: CPU seconds so far} of a HotSpot JVM's JIT compiler threads (Linux)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if (task / "comm").read_text().strip().startswith(_COMPILER_THREADS):
                # Fields after the name (which may hold spaces): utime and stime are the
                # 14th and 15th of the line, the 12th and 13th after the closing ")".
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                found[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    return found


@dataclass
class CpuTrace:
    root_pid: int
    interval_s: float = 0.5
    samples: list[tuple[float, dict[int | str, tuple[str, float]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-trace")

    def start(self) -> CpuTrace:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            self.samples.append((time.time(), roles(root)))
            self._stop.wait(self.interval_s)

    def used(self, role: str, t0: float, t1: float) -> float:
        """CPU seconds of `role` between epoch times t0 and t1."""
        return used(self.samples, role, t0, t1)


def used(samples: list[tuple[float, dict[int | str, tuple[str, float]]]], role: str, t0: float,
         t1: float) -> float:
    """CPU seconds between t0 and t1 of the processes of `role` (DRIVER, EXECUTORS), of one
    kind in it ("driver/JVM"), or of its JVMs' compiler threads ("JIT:driver")."""
    before = _latest(samples, t0)
    after = _latest(samples, t1)
    return sum(cpu - before.get(pid, (r, 0.0))[1] for pid, (r, cpu) in after.items()
               if r == role or r.startswith(f"{role}/"))


def _latest(samples: list[tuple[float, dict[int | str, tuple[str, float]]]], at: float
            ) -> dict[int | str, tuple[str, float]]:
    """Each process's last reading at or before `at` (processes gone since keep theirs)."""
    seen: dict[int | str, tuple[str, float]] = {}
    for when, reading in samples:
        if when > at:
            break
        seen.update(reading)
    return seen
