"""The short chaos suite (`propensity bench chaos --short`), in two parts on stacks of their own
(the scenarios that judge latency run by themselves, see LATENCY_SCENARIOS): the streaming
job killed twice mid-replay, Redis killed for 20 s under the streaming job, Kinesis throttling
a share of the job's and the replay's calls (each: nothing lost, nothing counted twice, online
features equal the fold), Redis killed under scorer load (degraded, never an error, recovery),
the scorer at twice the capacity it showed in the run, alone and beside a CPU hog (shed with
429, bounded latency, recovery), and a one-minute soak of job and scorer (nothing lost, no
error; memory shown, judged only in the 10-minute form)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from propensity import aws
from propensity.kinesis import read_events
from propensity.ops.bench import CHAOS_SCENARIOS, LATENCY_SCENARIOS
from propensity.ops.bench.chaos import run_chaos
from propensity.ops.bench.chaos_scorer import cores_apart, cpu_hog
from propensity.ops.bench.chaos_stream import where_missing
from propensity.ops.bench.memory import live_heap_floors
from propensity.ops.testing import on_cores
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings
from tests.test_kinesis_source import _put

KEEPING_SCENARIOS = tuple(s for s in CHAOS_SCENARIOS if s not in LATENCY_SCENARIOS)


@pytest.mark.beside  # long and mostly waiting; its timeouts are sized for a busy machine
@pytest.mark.timeout(1800)  # about 360 s on a quiet machine
def test_the_short_chaos_suite_keeps_every_event_through_faults(tmp_path: Path) -> None:
    outcomes = run_chaos(Settings(PROPENSITY_HOME=tmp_path), MULTICAT_SAMPLE, short=True,
                         only=KEEPING_SCENARIOS)
    assert [o.name for o in outcomes] == ["stream-kill", "stream-redis", "kinesis-throttle",
                                          "soak"]
    for outcome in outcomes:
        assert outcome.passed, outcome.format()
    kill = outcomes[0].figures
    assert kill["kills"] == 2 and kill["lost"] == 0 and kill["counted twice"] == 0
    for stream in outcomes[:3]:
        assert stream.figures["lost"] == 0 and stream.figures["counted twice"] == 0
        assert stream.figures["online features equal"] is True
    assert outcomes[1].figures["Redis writes retried"] > 0
    soak = outcomes[3].figures
    assert soak["lost"] == 0 and soak["errors"] == 0 and soak["memory judged"] is False
    # The JVM's live heap was measured with the JDK's jcmd (full collections).
    assert soak["job live heap MB"].count(",") == 6


@pytest.mark.alone  # its verdicts judge the scorer's latency on this machine's CPU
@pytest.mark.timeout(900)  # about 70 s on a quiet machine
def test_the_short_chaos_suite_keeps_the_scorer_inside_its_budget(tmp_path: Path) -> None:
    outcomes = run_chaos(Settings(PROPENSITY_HOME=tmp_path), MULTICAT_SAMPLE, short=True,
                         only=LATENCY_SCENARIOS)
    assert [o.name for o in outcomes] == list(LATENCY_SCENARIOS)
    for outcome in outcomes:
        assert outcome.passed, outcome.format()
    for overload in outcomes[1:]:  # twice the capacity measured in the run, with and without
        assert overload.figures["shed (429)"] > 0  # a CPU hog: the excess shed
        assert abs(overload.figures["offered/s"] - 2 * overload.figures["capacity/s"]) <= 1


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


def test_lost_events_are_located_in_the_stream(stream: Settings) -> None:
    """A failed verdict says where the missing events are: per shard, how many and the
    records holding them; none in the stream means the replay never sent them."""

    assert where_missing(stream, set()) == {"in the stream": 0}
    _put(stream, 12)
    sent = read_events(aws.client("kinesis", stream), stream.kinesis_stream).valid
    kept = set(sent["event_id"].iloc[:5])
    where = where_missing(stream, kept)
    assert sum(shard["events"] for shard in where.values()) == 7
    assert set(where) <= set(sent["shard_id"])
    for shard_id, shard in where.items():
        missing = sent[(sent["shard_id"] == shard_id) & ~sent["event_id"].isin(kept)]
        assert (shard["first"], shard["last"]) == (missing["sequence_number"].iloc[0],
                                                   missing["sequence_number"].iloc[-1])


def test_the_scorer_and_the_shop_get_cores_apart() -> None:
    scorer, shop = cores_apart()
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        assert scorer is shop is None
        return
    assert scorer and shop and not scorer & shop and scorer | shop == allowed
    with cpu_hog(cores=scorer) as pid:  # a child and the threads it starts stay there
        assert os.sched_getaffinity(pid) == scorer
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        capture_output=True, text=True, check=True, preexec_fn=on_cores(shop))
    assert child.stdout.strip() == str(sorted(shop))
