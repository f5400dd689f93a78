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
import threading
import time
from dataclasses import dataclass, field

import psutil

DRIVER, EXECUTORS = "driver", "executors"
_EXECUTOR_MAIN = "CoarseGrainedExecutorBackend"


def roles(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """{pid: (role, CPU seconds so far)} for `root` and all its descendants."""
    found: dict[int, tuple[str, float]] = {}
    stack = [(root, DRIVER)]
    while stack:
        process, role = stack.pop()
        with contextlib.suppress(psutil.Error):
            if role == DRIVER and _EXECUTOR_MAIN in " ".join(process.cmdline()):
                role = EXECUTORS
            times = process.cpu_times()
            found[process.pid] = (role, times.user + times.system)
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
    before = _latest(samples, t0)
    after = _latest(samples, t1)
    return sum(cpu - before.get(pid, (role, 0.0))[1]
               for pid, (r, cpu) in after.items() if r == role)


def _latest(samples: list[tuple[float, dict[int, tuple[str, float]]]], at: float
            ) -> dict[int, tuple[str, float]]:
    """Each process's last reading at or before `at` (processes gone since keep theirs)."""
    seen: dict[int, tuple[str, float]] = {}
    for when, reading in samples:
        if when > at:
            break
        seen.update(reading)
    return seen
