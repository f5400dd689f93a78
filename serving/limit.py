"""The scorer's concurrency limit, which follows measured latency (AIMD with a proportional
decrease, after Netflix's concurrency-limits and Envoy's adaptive concurrency filter).

A fixed limit on scoring requests in progress bounds latency only on the CPU it was chosen
on: every request waits for the one event loop, so the limit that gives 10 ms on a quiet core
gives 200 ms on a core shared with a neighbour or throttled by a CPU quota.

What a request waits for has two parts, and the limit sees both:
- its time in the app, from admission to the last byte (`observe`);
- the event loop's lag (`observe_lag`, from a timer that measures how late it wakes): a
  request waits about that long before it is read and again before its task first runs.
  Refusing with 429 costs CPU too (parsing, the answer), so under overload the loop itself
  is the queue; the time in the app alone would not show it.

Every window (`window_s`, with at least `min_samples` answers) the window's signal, its
answers' `WINDOW_QUANTILE` time in the app plus the largest lag seen in it, is compared with
the target, and the limit changes only if it was in use (as many in progress as half the
limit, or a refusal): below that, the limit neither made the latency nor can mend it.
- above the target: the limit falls in proportion (target / signal, between `MAX_DECREASE`
  and `MIN_DECREASE` of itself);
- at most the target: it climbs by one, or by a quarter when the signal is at most half the
  target (so the traffic that follows an overload, or a CPU become faster, is not shed for
  long), up to `maximum`.
Out of use (idle included: the lag's timer closes windows without answers), a limit below
`initial` climbs back towards it while the signal is at most half the target, so the
traffic that follows an overload does not meet the overload's limit.

The target is `TOLERANCE` times the unloaded signal, which is the lowest window's signal over
the last `baseline_windows` windows (so a machine that has become slower for good is followed
within that time), kept between `MIN_TARGET_S` and a quarter of the shop's budget: the rest
of the budget is for the network and the time the request spends outside these measures.
Pure: the caller passes the clock.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

WINDOW_QUANTILE = 0.9
TOLERANCE = 3.0
MIN_DECREASE = 0.9  # the least a decrease takes off: a tenth
MAX_DECREASE = 0.5  # the most: half
MIN_TARGET_S = 0.010


@dataclass(frozen=True)
class LimitChange:
    """What a window decided: the new limit, and why ("down", "up")."""

    limit: int
    direction: str
    signal_s: float
    target_s: float


@dataclass
class AdaptiveLimit:
    budget_s: float  # the shop's budget for a whole answer
    initial: int = 16
    minimum: int = 4
    maximum: int = 64
    window_s: float = 0.1
    min_samples: int = 10
    baseline_windows: int = 600  # a minute of 100 ms windows
    limit: int = field(init=False)
    _latencies: list[float] = field(init=False, default_factory=list)
    _lag_s: float = field(init=False, default=0.0)
    _window_started: float | None = field(init=False, default=None)
    _peak_in_progress: int = field(init=False, default=0)
    _refused: bool = field(init=False, default=False)
    _baselines: collections.deque = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"the limit's bounds must be 1 <= minimum <= maximum, not "
                             f"{self.minimum}..{self.maximum}")
        self.initial = min(self.maximum, max(self.minimum, self.initial))
        self.limit = self.initial
        self._baselines = collections.deque(maxlen=self.baseline_windows)

    @property
    def baseline_s(self) -> float | None:
        """The unloaded signal as measured so far (None before the first window)."""
        return min(self._baselines) if self._baselines else None

    @property
    def target_s(self) -> float:
        baseline = self.baseline_s
        wanted = MIN_TARGET_S if baseline is None else TOLERANCE * baseline
        return min(self.budget_s / 4, max(MIN_TARGET_S, wanted))

    def admits(self, in_progress: int) -> bool:
        """Whether one more request may start with `in_progress` already running."""
        if in_progress >= self.limit:
            self._refused = True
            return False
        self._peak_in_progress = max(self._peak_in_progress, in_progress + 1)
        return True

    def observe_lag(self, lag_s: float, now: float) -> LimitChange | None:
        """How late the event loop ran a timer (the wait in front of every request); a
        change when this closes a window."""
        self._lag_s = max(self._lag_s, lag_s)
        return self._tick(now)

    def observe(self, latency_s: float, now: float) -> LimitChange | None:
        """One answered request's time in the app; a change when this closes a window."""
        self._latencies.append(latency_s)
        return self._tick(now)

    def _tick(self, now: float) -> LimitChange | None:
        if self._window_started is None:
            self._window_started = now
        if now - self._window_started < self.window_s:
            return None
        in_use = self._refused or 2 * self._peak_in_progress >= self.limit
        if len(self._latencies) >= self.min_samples:
            signal = _quantile(sorted(self._latencies), WINDOW_QUANTILE) + self._lag_s
            self._baselines.append(signal)
        elif in_use:
            return None  # too few answers to judge a limit in use: the window goes on
        else:
            signal = self._lag_s  # next to idle: only the loop's lag is known
        self._latencies, self._lag_s, self._window_started = [], 0.0, now
        self._peak_in_progress, self._refused = 0, False
        if in_use:
            return self._decide(signal)
        if signal <= self.target_s / 2 and self.limit < self.initial:
            self.limit = min(self.initial, self.limit + max(1, self.limit // 4))
            return LimitChange(self.limit, "up", signal, self.target_s)
        return None

    def _decide(self, signal: float) -> LimitChange | None:
        target = self.target_s
        if signal > target and self.limit > self.minimum:
            factor = min(MIN_DECREASE, max(MAX_DECREASE, target / signal))
            self.limit = max(self.minimum, math.floor(self.limit * factor))
            return LimitChange(self.limit, "down", signal, target)
        if signal <= target and self.limit < self.maximum:
            step = max(1, self.limit // 4) if signal <= target / 2 else 1
            self.limit = min(self.maximum, self.limit + step)
            return LimitChange(self.limit, "up", signal, target)
        return None


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
