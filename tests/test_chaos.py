"""The short chaos suite (`propensity bench chaos --short`) on its own stack: the streaming
job killed twice mid-replay, Redis killed for 20 s under the streaming job, Kinesis throttling
a share of the job's and the replay's calls (each: nothing lost, nothing counted twice, online
features equal the fold), Redis killed under scorer load (degraded, never an error, recovery),
the scorer at twice its sustainable rate (shed with 429, bounded latency, recovery), and a
one-minute soak of job and scorer (nothing lost, no error; memory shown, judged only in the
10-minute form)."""

from __future__ import annotations

from pathlib import Path

import pytest

from propensity.bench.chaos import live_heap_floors, run_chaos
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings


def test_the_short_chaos_suite_passes(tmp_path: Path) -> None:
    outcomes = run_chaos(Settings(PROPENSITY_HOME=tmp_path), MULTICAT_SAMPLE, short=True)
    assert [o.name for o in outcomes] == ["stream-kill", "stream-redis", "kinesis-throttle",
                                          "scorer-redis", "scorer-overload", "soak"]
    for outcome in outcomes:
        assert outcome.passed, outcome.format()
    kill = outcomes[0].figures
    assert kill["kills"] == 2 and kill["lost"] == 0 and kill["counted twice"] == 0
    for stream in outcomes[:3]:
        assert stream.figures["lost"] == 0 and stream.figures["counted twice"] == 0
        assert stream.figures["online features equal"] is True
    assert outcomes[1].figures["Redis writes retried"] > 0
    assert outcomes[4].figures["shed (429)"] > 0
    soak = outcomes[5].figures
    assert soak["lost"] == 0 and soak["errors"] == 0 and soak["memory judged"] is False
    # The JVM's live heap was measured with the JDK's jcmd (full collections).
    assert soak["job live heap MB"].count(",") == 6


def test_an_unknown_scenario_is_refused_before_any_stack_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown chaos scenarios \['stream-kil'\]"):
        run_chaos(Settings(PROPENSITY_HOME=tmp_path), MULTICAT_SAMPLE, short=True,
                  only=("stream-kil",))
    assert not (tmp_path / "chaos").exists()


def test_the_live_heap_is_judged_by_its_floor_in_each_window() -> None:
    probes = [(0.40, 120.0), (0.45, 96.0), (0.50, 179.0), (0.55, 101.0),
              (0.85, 148.0), (0.90, 99.0), (0.95, 130.0)]
    assert live_heap_floors(probes) == (96.0, 99.0)
    assert live_heap_floors([*probes[:6], (0.95, None)]) is None  # no jcmd: not judged
    assert live_heap_floors(probes[:4]) is None
