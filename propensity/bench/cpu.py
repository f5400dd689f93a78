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
import threading
import time
from dataclasses import dataclass, field

import psutil

DRIVER, EXECUTORS = "driver", "executors"
_EXECUTOR_MAIN = "CoarseGrainedExecutorBackend"


# What a process of the job is, within its role.
JVM, PYTHON_MAIN, PYTHON_WORKERS = "JVM", "Python main", "Python workers"
KINDS = (JVM, PYTHON_MAIN, PYTHON_WORKERS)


def kind_of(command_line: list[str]) -> str:
    """A JVM, a Python worker started by Spark (`python -m pyspark.<module>`: tasks, forked by
    pyspark's daemon; on the driver also the data source's planner), or another Python process
    (the job's own driver)."""
    if command_line and command_line[0].endswith("java"):
        return JVM
    started_by_spark = any(a == "-m" and b.startswith("pyspark.")
                           for a, b in itertools.pairwise(command_line))
    return PYTHON_WORKERS if started_by_spark else PYTHON_MAIN


def roles(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """{pid: (role, CPU seconds so far)} for `root` and all its descendants; the role is
    DRIVER or EXECUTORS, followed by "/" and the process's kind."""
    found: dict[int, tuple[str, float]] = {}
    stack = [(root, DRIVER)]
    while stack:
        process, role = stack.pop()
        with contextlib.suppress(psutil.Error):
            command_line = process.cmdline()
            if role == DRIVER and _EXECUTOR_MAIN in " ".join(command_line):
                role = EXECUTORS
            times = process.cpu_times()
            found[process.pid] = (f"{role}/{kind_of(command_line)}", times.user + times.system)
            stack.extend((child, role) for child in process.children())
    return found


@dataclass
class CpuTrace:
    root_pid: int
    interval_s: float = 0.5
    samples: list[tuple[float, dict[int, tuple[str, float]]]] = field(default_factory=list)

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


def used(samples: list[tuple[float, dict[int, tuple[str, float]]]], role: str, t0: float,
         t1: float) -> float:
    """CPU seconds between t0 and t1 of the processes of `role` (DRIVER, EXECUTORS) or of
    one kind in it ("driver/JVM")."""
    before = _latest(samples, t0)
    after = _latest(samples, t1)
    return sum(cpu - before.get(pid, (r, 0.0))[1] for pid, (r, cpu) in after.items()
               if r == role or r.startswith(f"{role}/"))


def _latest(samples: list[tuple[float, dict[int, tuple[str, float]]]], at: float
            ) -> dict[int, tuple[str, float]]:
    """Each process's last reading at or before `at` (processes gone since keep theirs)."""
    seen: dict[int, tuple[str, float]] = {}
    for when, reading in samples:
        if when > at:
            break
        seen.update(reading)
    return seen
