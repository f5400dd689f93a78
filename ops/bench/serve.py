"""`propensity bench serve`: the scorer under open-loop load with its prediction log off, then
on (the log's cost in the same run), then Feast's own feature server (`feast serve`, features
only) under the same load, on the same repo and Redis.

The stack's `latest` model is served; the session features of `--shape` (a REES46 file) are
written to Redis first, so every request names a session, user and product that exist. The
load generator is a process of its own (ops/bench/load.py), on the same machine.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from propensity import feature_repo, model_store
from propensity import features as F
from propensity.ops.bench.load import run_as_process
from propensity.ops.testing import (
    free_port,
    load_session_features,
    running_http_server,
    running_scorer,
    session_requests,
)
from propensity.settings import Settings


@dataclass
class ServeBench:
    sessions: int
    model_version: str
    rows: list[dict] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.sessions} sessions of real events in Redis; model {self.model_version}; "
                 "open-loop load, latency from each request's due time (ms)",
                 f"{'server':<34} {'offered/s':>9} {'achieved/s':>10} {'p50':>7} {'p95':>7} "
                 f"{'p99':>7} {'max':>8} {'errors':>7}"]
        for row in self.rows:
            lines.append(
                f"{row['server']:<34} {row['offered_rps']:>9.0f} {row['achieved_rps']:>10.0f} "
                f"{row['p50_ms']:>7.2f} {row['p95_ms']:>7.2f} {row['p99_ms']:>7.2f} "
                f"{row['max_ms']:>8.1f} {sum(row['errors'].values()):>7}")
        return "\n".join(lines)


def _bodies(shape: Path, folder: Path) -> tuple[Path, Path, int]:
    """Request bodies for the scorer and for `feast serve`, one per session (its last
    event's user and product)."""
    requests = session_requests(shape)
    ours, theirs = folder / "scorer.jsonl", folder / "feast.jsonl"
    with ours.open("wb") as a, theirs.open("wb") as b:
        for keys in requests:
            a.write(orjson.dumps(keys) + b"\n")
            b.write(orjson.dumps({"feature_service": F.MODEL_SERVICE, "entities": {
                k: [v] for k, v in keys.items()}}) + b"\n")
    return ours, theirs, len(requests)


def running_feast_server(settings: Settings) -> contextlib.AbstractContextManager[str]:
    """`feast serve` (HTTP, one worker, no access log, no worker recycling) on the repo and
    Redis of the settings, for a block (its base URL)."""
    feature_repo.apply(settings)
    port = free_port()
    return running_http_server("feast serve", [
        str(Path(sys.executable).parent / "feast"), "-c", str(feature_repo.REPO), "serve",
        "-h", "127.0.0.1", "-p", str(port), "--no-access-log", "-w", "1",
        # Tuned: gunicorn's default here restarts the worker every ~1,000 requests.
        "--max-requests", "0", "--max-requests-jitter", "0"], settings, port, timeout_s=90)


def run_serve_bench(settings: Settings, rates: list[float], duration_s: float, shape: Path,
                    workers: int = 1, warmup_s: float = 3) -> ServeBench:
    version = model_store.latest(settings)
    if version is None:
        raise model_store.ModelStoreError("no `latest` model to serve: run `propensity train`")
    load_session_features(settings, shape)
    with tempfile.TemporaryDirectory(prefix="propensity-bench-serve-") as work:
        ours, theirs, sessions = _bodies(shape, Path(work))
        bench = ServeBench(sessions, version)
        scorer = f"scorer ({workers} worker{'s' * (workers > 1)})"
        targets = [(f"{scorer}, log {'on' if logged else 'off'}", running_scorer,
                    {"workers": workers}, "/v1/propensity", ours,
                    settings.model_copy(update={"prediction_log": logged}))
                   for logged in (False, True)]
        targets.append(("feast serve (features)", running_feast_server, {},
                        "/get-online-features", theirs, settings))
        for name, start, options, path, bodies, served in targets:
            with start(served, **options) as url:
                run_as_process(url + path, bodies, 200, warmup_s)
                for rate in rates:
                    result = run_as_process(url + path, bodies, rate, duration_s)
                    bench.rows.append({"server": name, "offered_rps": rate, **result})
    return bench
