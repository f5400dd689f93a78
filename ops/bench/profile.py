"""Where a running Spark job's CPU goes: sampled stacks of its Python processes (py-spy) and of
its JVMs (Java Flight Recorder), summarised alike.

`JobProfiler(root_pid, folder)` starts both when the measured window begins and stops them when
it ends: py-spy follows the job's Python driver and every Python process below it (the
executors' workers, the data source's planner), and each JVM of the job gets a flight recording
(`jcmd PID JFR.start`). The raw files stay in the folder (`python.txt`, py-spy's collapsed
stacks; `jvm-PID.jfr`, readable with `jfr` or JDK Mission Control); `summary()` reads them into
`Stacks` and prints, for each side, the share of samples by process kind, the functions that
hold the most samples themselves (self) and the project's own functions by the samples under
them (inclusive).

JFR's execution samples are Java frames only: CPU in native code (RocksDB, Arrow's C++, zstd)
counts under the Java method that called it when a frame shows it, and is otherwise missing;
the process totals of propensity.ops.bench.cpu are the whole.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from propensity.ops.bench.cpu import JVM, kind_of

_PACKAGES = "streaming|batch|serving|training|feature_repo|propensity"
# A file of the project's own code, and a frame of it once shortened ("fold (streaming/x.py)").
_OUR_FILE = re.compile(rf"(?:^|/)((?:{_PACKAGES})/[\w/]+\.py)$")
_OURS = re.compile(rf"\((?:{_PACKAGES})/")
_PY_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
_PROCESS = re.compile(r'^process \d+:"(?P<command>.*)"$')
PY_SPY_RATE = 50  # samples/s per process: enough for shares of a minute, cheap to take
TOP = 12


@dataclass
class Stacks:
    """Sampled stacks, outermost frame first, with how often each was seen."""

    samples: Counter[tuple[str, ...]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)  # samples by process kind

    @property
    def total(self) -> int:
        return sum(self.samples.values())

    def add(self, kind: str, frames: tuple[str, ...], count: int) -> None:
        self.samples[frames] += count
        self.kinds[kind] += count

    def self_top(self, n: int = TOP) -> list[tuple[str, int]]:
        """The innermost frames holding the most samples."""
        counts: Counter[str] = Counter()
        for frames, count in self.samples.items():
            if frames:
                counts[frames[-1]] += count
        return counts.most_common(n)

    def inclusive_top(self, keep: re.Pattern[str], n: int = TOP) -> list[tuple[str, int]]:
        """Frames matching `keep` by the samples they are anywhere in (once per stack)."""
        counts: Counter[str] = Counter()
        for frames, count in self.samples.items():
            for frame in set(frames):
                if keep.search(frame):
                    counts[frame] += count
        return counts.most_common(n)

    def format(self, title: str, ours: re.Pattern[str] | None = None) -> str:
        total = self.total
        if not total:
            return f"{title}: no samples"
        def share(n: int) -> str:
            return f"{100 * n / total:5.1f}%"
        lines = [f"{title}: {total:,} samples; by process: " + ", ".join(
            f"{kind} {share(n).strip()}" for kind, n in self.kinds.most_common())]
        lines.append("  self (where the samples are)")
        lines += [f"    {share(n)}  {frame}" for frame, n in self.self_top()]
        if ours is not None:
            lines.append("  inclusive (the project's functions, by the samples under them)")
            lines += [f"    {share(n)}  {frame}" for frame, n in self.inclusive_top(ours)]
        return "\n".join(lines)


def _short_python_frame(frame: str) -> str:
    """ "fold (/x/streaming/sessionize.py:88)" -> "fold (streaming/sessionize.py)"."""
    match = _PY_FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        ours = _OUR_FILE.search(file)
        file = ours.group(1) if ours else Path(file).name
    return f"{match['function']} ({file})"


def read_py_spy(lines: Iterable[str]) -> Stacks:
    """py-spy's raw output (`--format raw`, with `--subprocesses`): one stack per line, the
    process first, the count last."""
    stacks = Stacks()
    for line in lines:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = text.split(";")
        kind = "python"
        while frames and (process := _PROCESS.match(frames[0])):  # the chain of processes
            kind = kind_of(process["command"].split())
            frames = frames[1:]
        stacks.add(kind, tuple(_short_python_frame(f) for f in frames), int(count))
    return stacks


def read_jfr(recording: dict, stacks: Stacks | None = None, kind: str = JVM) -> Stacks:
    """The execution samples of `jfr print --json` output, innermost frame last."""
    stacks = stacks if stacks is not None else Stacks()
    for event in recording["recording"]["events"]:
        trace = (event.get("values", {}).get("stackTrace") or {}).get("frames") or []
        frames = tuple(f"{f['method']['type']['name'].replace('/', '.')}.{f['method']['name']}"
                       for f in reversed(trace))
        stacks.add(kind, frames, 1)
    return stacks


def java_packages(stacks: Stacks, depth: int = 3) -> Stacks:
    """The same samples with each frame cut to its package (org.apache.spark.sql)."""
    cut = Stacks()
    for frames, count in stacks.samples.items():
        cut.samples[tuple(".".join(f.split(".")[:depth]) for f in frames)] += count
    cut.kinds = Counter(stacks.kinds)
    return cut


class JobProfiler:
    """py-spy over the job's Python processes and a flight recording in each of its JVMs,
    from `start()` to `stop()`."""

    def __init__(self, root_pid: int, folder: Path) -> None:
        self.root_pid = root_pid
        self.folder = folder
        self._py_spy: subprocess.Popen | None = None
        self._jvms: list[int] = []

    def start(self) -> JobProfiler:
        self.folder.mkdir(parents=True, exist_ok=True)
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            raise FileNotFoundError("bench stream --profile needs py-spy: pip install "
                                    "'propensity[dev]' (or py-spy==0.4.1)")
        self._py_spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(self.root_pid), "--subprocesses", "--nonblocking",
             "--rate", str(PY_SPY_RATE), "--format", "raw", "-o", str(self.python_file)],
            stdout=subprocess.DEVNULL, stderr=(self.folder / "py-spy.log").open("w"))
        self._jvms = [p.pid for p in _tree(self.root_pid)
                      if kind_of(_command_line(p)) == JVM]
        for pid in self._jvms:
            subprocess.run(["jcmd", str(pid), "JFR.start", "name=propensity-bench",
                            "settings=profile", f"filename={self.jvm_file(pid)}"],
                           check=True, capture_output=True, timeout=60)
        return self

    def stop(self) -> None:
        for pid in self._jvms:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["jcmd", str(pid), "JFR.stop", "name=propensity-bench"],
                               check=True, capture_output=True, timeout=120)
        if self._py_spy is not None:
            self._py_spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                self._py_spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._py_spy.kill()

    @property
    def python_file(self) -> Path:
        return self.folder / "python.txt"

    def jvm_file(self, pid: int) -> Path:
        return self.folder / f"jvm-{pid}.jfr"

    def summary(self) -> str:
        return summary(self.folder)


def summary(folder: Path) -> str:
    """The summary of the raw files a JobProfiler left in `folder`."""
    python_file = folder / "python.txt"
    python = read_py_spy(python_file.read_text(errors="replace").splitlines()
                         if python_file.exists() else [])
    jvm = Stacks()
    for recording in sorted(folder.glob("jvm-*.jfr")):
        read_jfr(_jfr_json(recording), jvm)
    return "\n".join([
        f"profile    {folder}",
        python.format("  Python", ours=_OURS),
        jvm.format("  JVM (Java frames)"),
        java_packages(jvm).format("  JVM by package"),
    ])


def main(argv: list[str] | None = None) -> int:
    """`python -m propensity.ops.bench.profile DIR`: the summary of a profile taken before."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m propensity.ops.bench.profile DIR (a folder of bench stream "
              "--profile)", file=sys.stderr)
        return 2
    print(summary(Path(args[0])))
    return 0


def _jfr_json(path: Path) -> dict:
    printed = subprocess.run(["jfr", "print", "--json", "--stack-depth", "64", "--events",
                              "jdk.ExecutionSample", str(path)],
                             check=True, capture_output=True, text=True, timeout=600)
    return json.loads(printed.stdout)


def _tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _command_line(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


if __name__ == "__main__":
    sys.exit(main())
