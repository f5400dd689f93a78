"""The scorer's adaptive concurrency limit (serving/limit.py), driven by a clock, latencies
and event-loop lags given here."""

from __future__ import annotations

import pytest

from propensity.serving.limit import MIN_TARGET_S, TOLERANCE, AdaptiveLimit

BUDGET_S = 0.1


def _window(limit: AdaptiveLimit, latency_s: float, start: float, in_progress: int | None = None,
            lag_s: float = 0.0):
    """One 1-second window of 20 answers at `latency_s` from `start`, with `in_progress`
    requests running at each admission (default: the limit, so one is refused); returns
    what the window decided."""
    change = None
    for i in range(20):
        limit.admits(limit.limit if in_progress is None else in_progress)
        change = limit.observe_lag(lag_s, start + i / 19) or change
        change = limit.observe(latency_s, start + i / 19) or change
    return change


def _limit(**kwargs) -> AdaptiveLimit:
    return AdaptiveLimit(BUDGET_S, window_s=1.0, **kwargs)


def test_the_limit_climbs_while_fast_and_in_use_up_to_its_maximum() -> None:
    limit = _limit(initial=16, maximum=40)
    first = _window(limit, 0.001, 0)
    assert first.direction == "up" and first.limit == 20  # far below the target: a quarter
    for i in range(1, 10):
        _window(limit, 0.001, i)
    assert limit.limit == 40
    assert _window(limit, 0.001, 10) is None  # at the maximum


def test_near_the_target_it_climbs_by_one() -> None:
    limit = _limit(initial=16)
    _window(limit, 0.004, 0)  # the baseline: 4 ms, so the target is 12 ms
    assert limit.target_s == pytest.approx(TOLERANCE * 0.004)
    change = _window(limit, 0.010, 1)  # above half the target, within it
    assert change.direction == "up" and change.limit == limit.limit


def test_the_limit_falls_in_proportion_when_latency_rises_and_climbs_back() -> None:
    limit = _limit(initial=32)
    _window(limit, 0.002, 0)  # unloaded: target = max(10 ms, 3 x 2 ms)
    assert limit.target_s == MIN_TARGET_S
    climbed = limit.limit
    change = _window(limit, 0.011, 1)  # a little above the target: a tenth off
    assert change.direction == "down" and change.limit == int(climbed * 0.9)
    before = limit.limit
    change = _window(limit, 0.100, 2)  # ten times the target: at most half off
    assert change.limit == before // 2
    for i in range(3, 20):
        _window(limit, 0.100, i)
    assert limit.limit == limit.minimum == 4  # never below the minimum
    for i in range(20, 30):
        _window(limit, 0.002, i)
    assert limit.limit > 16  # back up once fast again


def test_the_event_loops_lag_counts_as_latency() -> None:
    limit = _limit(initial=16)
    _window(limit, 0.002, 0)
    before = limit.limit
    # Fast in the app, but the loop wakes 20 ms late: requests wait before the app sees them.
    change = _window(limit, 0.002, 1, lag_s=0.020)
    assert change.direction == "down" and limit.limit < before


def test_the_limit_does_not_move_while_not_in_use_above_its_initial_value() -> None:
    limit = _limit(initial=8)
    for i in range(5):
        _window(limit, 0.001, i)
    high = limit.limit
    for i in range(5, 10):  # at most a third of the limit in progress: not in use
        assert _window(limit, 0.001, i, in_progress=high // 3) is None
        assert _window(limit, 0.050, i + 0.5, in_progress=high // 3) is None
    assert limit.limit == high


def test_out_of_use_a_lowered_limit_returns_to_its_initial_value() -> None:
    limit = _limit(initial=16)
    _window(limit, 0.002, 0)
    for i in range(1, 10):
        _window(limit, 0.100, i)  # an overload drives it down
    assert limit.limit == 4
    for i in range(10, 20):
        _window(limit, 0.001, i, in_progress=1)  # quiet traffic after it
    assert limit.limit == 16  # the initial value, not more


def test_a_window_needs_its_time_and_its_answers() -> None:
    limit = _limit(initial=8)
    for i in range(9):  # 9 answers over 8 s: not a window yet (10 needed)
        limit.admits(8)
        assert limit.observe(0.5, i) is None
    limit.admits(8)
    assert limit.observe(0.5, 9).direction == "down"  # the 10th closes it
    for _ in range(20):  # 20 answers in no time: not a window either
        limit.admits(8)
        assert limit.observe(0.5, 9.5) is None


def test_the_target_stays_between_its_floor_and_a_quarter_of_the_budget() -> None:
    limit = _limit()
    assert limit.target_s == MIN_TARGET_S  # nothing measured yet
    _window(limit, 0.5, 0)
    assert limit.target_s == BUDGET_S / 4
    assert limit.baseline_s == 0.5


def test_idle_windows_closed_by_the_lag_timer_bring_the_limit_back() -> None:
    limit = _limit(initial=16)
    _window(limit, 0.002, 0)
    for i in range(1, 10):
        _window(limit, 0.100, i)
    assert limit.limit == 4
    for i in range(10, 20):  # no request at all, a quiet loop: only the timer ticks
        limit.observe_lag(0.0005, i)
    assert limit.limit == 16
    assert limit.observe_lag(0.0005, 21) is None  # at its initial value it stays


def test_a_busy_window_with_too_few_answers_goes_on() -> None:
    limit = _limit(initial=8)
    for i in range(5):
        limit.admits(8)  # refused: in use
        assert limit.observe_lag(0.001, i) is None  # no answer for 4 s: not judged
    for _ in range(10):
        limit.observe(0.5, 5)
    assert limit.limit < 8  # judged once the answers came, with the window's lag


def test_the_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        AdaptiveLimit(BUDGET_S, minimum=4, maximum=2)
    assert AdaptiveLimit(BUDGET_S, initial=100, maximum=64).limit == 64
    assert AdaptiveLimit(BUDGET_S, initial=1, minimum=4).limit == 4
    capped = _limit(initial=16, minimum=1, maximum=1)
    for i in range(5):  # idle windows bring it back to its initial value: within the bounds
        capped.observe_lag(0.0001, i)
    assert capped.limit == 1
