"""`propensity bench chaos [--short]`: the system's promises under faults, with figures.

- stream-kill: the streaming job SIGKILLed several times during a replay and restarted each
  time; then every event is in the lake exactly once and Feast's online features equal the
  fold over the events sent.
- scorer-redis: redis-server killed and restarted under scorer load: never an error, degraded
  answers while Redis is away, all within the 100 ms budget, recovery by itself.
- stream-redis: Redis SIGKILLed under the running streaming job and started again after an
  outage longer than redis-py's own retries: the job stays up (its sink retries the batch's
  Redis writes), nothing is lost or doubled, and it catches up by itself. This Redis keeps
  an append-only file (fsync always), as a failover to a replica keeps the data.
- kinesis-throttle: the job and the replay reach Kinesis through a proxy that throttles a
  share of GetRecords, PutRecords, GetShardIterator and ListShards calls as Kinesis does:
  nothing lost or doubled.
- scorer-overload: twice the scorer's capacity, measured first in the same run: load shed
  with 429, the answered requests' p99 within the budget and no timeout, then at a quarter of
  the capacity (nearly) every request answered with the median back near the unloaded one.
- scorer-overload-hog: the same with another process keeping one core busy (the suite starts
  and stops it): the concurrency limit follows the slower CPU.
- soak: the streaming job and the scorer at a moderate rate of generated traffic (the real
  sample's shape, event times = now) for 10 minutes: their memory sampled every 5 s must not
  grow once settled (the job's fixed heap counted by the least it holds after full
  collections in each window); nothing lost; every request answered. With --short it runs
  one minute, which is inside the warm-up: memory is shown there, not judged.

It runs on a stack of its own under $PROPENSITY_HOME/chaos (started and stopped here). The
scenarios live beside it: chaos_stream.py (the streaming job's), chaos_scorer.py (the
scorer's), memory.py (the soak and its memory forensics); verdicts.py holds what each found.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from propensity.ops.bench import CHAOS_SCENARIOS, SOAK_FULL_S, SOAK_SHORT_S
from propensity.ops.bench.chaos_scorer import (
    scorer_overload,
    scorer_redis,
)
from propensity.ops.bench.chaos_stream import (
    kinesis_throttle,
    stream_kill,
    stream_redis,
)
from propensity.ops.bench.memory import (
    soak,
)
from propensity.ops.bench.verdicts import (
    Outcome,
)
from propensity.ops.demo import fresh_stack, register_shipped_model
from propensity.settings import Settings


def run_chaos(settings: Settings, file: Path, short: bool,
              only: tuple[str, ...] = CHAOS_SCENARIOS, soak_s: float | None = None
              ) -> list[Outcome]:
    """The scenarios named in `only` (all by default), in their usual order, on a fresh stack;
    `soak_s`: the soak's length (default SOAK_FULL_S, SOAK_SHORT_S with `short`)."""
    unknown = set(only) - set(CHAOS_SCENARIOS)
    if unknown:
        raise ValueError(f"unknown chaos scenarios {sorted(unknown)}; known: {CHAOS_SCENARIOS}")
    soak_seconds = soak_s or (SOAK_SHORT_S if short else SOAK_FULL_S)
    stack, chaos = fresh_stack(settings.home / "chaos")
    logs = stack.dir
    outcomes = []
    try:
        register_shipped_model(chaos)
        with tempfile.TemporaryDirectory(prefix="propensity-chaos-") as work:
            folder = Path(work)
            scenarios = {
                # The sample's 3 hours at 150x last 70 s: room for two kills and restarts.
                "stream-kill": lambda: stream_kill(chaos, file, 2 if short else 5,
                                                   150 if short else 60,
                                                   logs / "chaos-stream-kill.log"),
                # Longer than redis-py's own retries (at most 14 s), so the sink's are needed.
                "stream-redis": lambda: stream_redis(chaos, file, folder, 20 if short else 30,
                                                     200 if short else 60,
                                                     logs / "chaos-stream-redis.log"),
                "kinesis-throttle": lambda: kinesis_throttle(
                    chaos, file, folder, 200 if short else 60,
                    logs / "chaos-kinesis-throttle.log"),
                "scorer-redis": lambda: scorer_redis(chaos, file, folder, 9 if short else 30),
                "scorer-overload": lambda: scorer_overload(chaos, file, folder,
                                                           6 if short else 30),
                "scorer-overload-hog": lambda: scorer_overload(chaos, file, folder,
                                                               6 if short else 30, hog=True),
                "soak": lambda: soak(chaos, file, folder, soak_seconds, 200, 50,
                                     logs / "chaos-soak.log",
                                     judge_memory=soak_seconds >= SOAK_FULL_S),
            }
            for name in CHAOS_SCENARIOS:
                if name in only:
                    outcome = scenarios[name]()
                    print(outcome.format(), flush=True)
                    outcomes.append(outcome)
    finally:
        stack.down()
    return outcomes
