"""`propensity demo` end to end, in a short form: its own stack, the shipped model, the
streaming job and the scorer as processes, the bundled sample replayed fast while the shop
asks for propensities; a challenger retrained from the streamed lake in canary beside the
champion; Feast's online features checked; the monitor's figures per variant; the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from propensity.ops.demo import run_demo
from propensity.ops.stack import LocalStack
from propensity.samples import MULTICAT_SAMPLE
from propensity.settings import Settings


@pytest.mark.beside  # its own stack and processes, mostly waiting on the replay: second lane
def test_the_demo_runs_end_to_end_and_writes_its_report(tmp_path: Path,
                                                        capsys) -> None:
    settings = Settings(PROPENSITY_HOME=tmp_path)
    assert run_demo(settings, MULTICAT_SAMPLE, speed=400, duration_s=25) == 0
    out = capsys.readouterr().out
    assert "[9/9]" in out and "summary:" in out and "demo stack stopped" in out
    assert "equal the recomputation" in out
    # The daily batch over the streamed day: the shop's last sessions get user and product
    # features (most of their users and products were seen earlier in the sample).
    served = re.search(r"Feast now serves user features of (\d+) of (\d+) users and product "
                       r"features of (\d+) of (\d+) products", out)
    assert served, out
    users, all_users, products, all_products = map(int, served.groups())
    assert users == all_users > 0 and products == all_products > 0
    report = tmp_path / "demo-report"
    text = (report / "report.md").read_text()
    assert "the daily batch over the streamed day" in text
    # Two variants answered the shop, and the monitor measured each on the replayed sample.
    split = re.search(r"answers by variant: challenger ([\d,]+), champion ([\d,]+)", text)
    assert split and all(int(n.replace(",", "")) > 0 for n in split.groups()), text
    assert "| champion |" in text and "| challenger |" in text
    assert "conversion per shopper" in text  # the A/B readout
    monitor = (report / "monitor" / "report.md").read_text()
    assert "## " in monitor and "PSI" in monitor
    assert "challenger in canary for 50.0% of the shoppers" in out
    for plot in ("propensity.png", "latency.png", "freshness.png"):
        assert (report / plot).read_bytes().startswith(b"\x89PNG"), plot
    assert not any(status.running for status in LocalStack(tmp_path / "demo").status())
