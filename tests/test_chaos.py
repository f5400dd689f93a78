"""The short chaos suite (`propensity bench chaos --short`) on its own stack: the streaming
job killed twice mid-replay, Redis killed for 20 s under the streaming job, Kinesis throttling
a share of the job's and the replay's calls (each: nothing lost, nothing counted twice, online
features equal the fold), Redis killed under scorer load (degraded, never an error, recovery),
the scorer at twice its sustainable rate (shed with 429, bounded latency, recovery), and a
one-minute soak of job and scorer (nothing lost, no error; memory shown, judged only in the
10-minute form)."""

from __future__ import annotations

from pathlib import Path

from propensity.bench.chaos import run_chaos
from propensity.settings import Settings
from tests.conftest import SAMPLE


def test_the_short_chaos_suite_passes(tmp_path: Path) -> None:
    outcomes = run_chaos(Settings(PROPENSITY_HOME=tmp_path), SAMPLE, short=True)
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
