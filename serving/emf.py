"""The scorer's own metrics in CloudWatch (when PROPENSITY_METRICS_NAMESPACE is set): every
EMF_INTERVAL_S each process writes one log line in CloudWatch's embedded metric format with
what happened since its last line (propensity/cloudwatch.py names the metrics): scoring
requests, answers, degraded answers, 429s, 422s, 5xx, and up to 100 samples of the session
features' age at the moment scored. On ECS the task's awslogs driver ships stdout to
CloudWatch Logs, which turns each line into metrics.

Why the embedded metric format rather than the CloudWatch agent scraping /metrics as a sidecar:
no second container to size, configure and keep alive on every Fargate task; no scrape
configuration kept beside the code; no PutMetricData calls (or their rights) from the
scorer; the counts come from the same Prometheus counters /metrics shows, read once a minute
off the request path. A line with zero requests still goes out, so "no requests" is a value,
and a task that is gone sends nothing (the alarms treat that as missing data).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from propensity import cloudwatch
from propensity.rollout import SHADOW

EMF_INTERVAL_S = 60.0


class Reservoir:
    """A uniform sample of at most `size` of the values added since the last `drain`
    (reservoir sampling: constant memory and time per value)."""

    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        self.size = size
        self.rng = rng or random.Random()
        self.values: list[float] = []
        self.seen = 0

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = self.rng.randrange(self.seen)
            if slot < self.size:
                self.values[slot] = value

    def drain(self) -> list[float]:
        values, self.values, self.seen = self.values, [], 0
        return values


def totals(metrics: Any) -> dict[str, float]:
    """The scorer's counters since it started, by CloudWatch metric name (from the
    Prometheus registry's samples: the same counts /metrics shows)."""
    sums: dict[str, float] = defaultdict(float)
    codes: dict[str, float] = defaultdict(float)
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "propensity_responses_total":
                codes[sample.labels["code"]] += sample.value
            elif sample.name != "propensity_answers_total" or sample.labels["variant"] != SHADOW:
                sums[sample.name] += sample.value
    return {
        cloudwatch.SCORING_REQUESTS: sum(codes.values()) + sums["propensity_shed_total"],
        cloudwatch.ANSWERS: sums["propensity_answers_total"],
        cloudwatch.DEGRADED_ANSWERS: sums["propensity_degraded_answers_total"],
        cloudwatch.SHED_REQUESTS: sums["propensity_shed_total"],
        cloudwatch.INVALID_REQUESTS: codes["422"],
        cloudwatch.SERVER_ERRORS: sum(v for code, v in codes.items() if code.startswith("5")),
    }


class EmfReporter:
    """Writes the scorer's EMF line every interval (`run`), each with the counts since the
    previous one."""

    def __init__(self, namespace: str, metrics: Any,
                 write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.namespace = namespace
        self.metrics = metrics
        self.write = write or self._stdout
        self.clock = clock
        self.last = totals(metrics)

    @staticmethod
    def _stdout(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def document(self) -> dict[str, Any]:
        """The counts since the previous document, and the feature-age samples."""
        now = totals(self.metrics)
        values: dict[str, float | list[float]] = {
            name: now[name] - self.last.get(name, 0.0) for name in now}
        values[cloudwatch.SESSION_FEATURE_AGE_S] = self.metrics.feature_age_samples.drain()
        self.last = now
        return cloudwatch.emf_document(self.namespace, cloudwatch.SCORER_DIMENSIONS, values,
                                       int(self.clock() * 1000))

    async def run(self, interval_s: float = EMF_INTERVAL_S) -> None:
        """A line every interval, and a last one when cancelled (the scorer's graceful stop:
        a task's last minute is counted too)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.write(json.dumps(self.document()))
        finally:
            self.write(json.dumps(self.document()))
