"""The short chaos suite (`propensity bench chaos --short`) on its own stack: the streaming
job killed twice mid-replay (nothing lost, nothing counted twice, online features equal the
fold), Redis killed under scorer load (degraded, never an error, recovery), and the scorer at
twice its sustainable rate (shed with 429, bounded latency, recovery)."""

from __future__ import annotations

from pathlib import Path

from propensity.bench.chaos import run_chaos
from propensity.settings import Settings
from tests.conftest import SAMPLE


def test_the_short_chaos_suite_passes(tmp_path: Path) -> None:
    outcomes = run_chaos(Settings(PROPENSITY_HOME=tmp_path), SAMPLE, short=True)
    assert [o.name for o in outcomes] == ["stream-kill", "scorer-redis", "scorer-overload"]
    for outcome in outcomes:
        assert outcome.passed, outcome.format()
    kill = outcomes[0].figures
    assert kill["kills"] == 2 and kill["lost"] == 0 and kill["counted twice"] == 0
    assert outcomes[2].figures["shed (429)"] > 0
