"""The scorer's metrics for CloudWatch (serving/emf.py, propensity/cloudwatch.py): the counts
since the last line from the same counters /metrics shows, the feature-age samples, the
embedded metric format's document; and a real scorer's lines, its last one at its stop."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest

from propensity import cloudwatch
from propensity.ops.demo import register_shipped_model
from propensity.ops.testing import isolated, running_scorer
from propensity.serving.app import Metrics
from propensity.serving.emf import EmfReporter, Reservoir
from propensity.settings import Settings

NAMESPACE = "PropensityTest"


def test_each_line_counts_what_happened_since_the_last() -> None:
    metrics = Metrics()
    lines: list[str] = []
    reporter = EmfReporter(NAMESPACE, metrics, lines.append, clock=lambda: 1_700_000_000.5)
    metrics.responses.labels("200").inc(3)
    metrics.responses.labels("422").inc()
    metrics.responses.labels("503").inc()
    metrics.shed.inc(2)
    metrics.answers.labels("champion").inc(4)
    metrics.answers.labels("challenger").inc(1)
    metrics.answers.labels("shadow").inc(5)  # scored beside, not answered
    metrics.degraded_answers.inc()
    for age in range(150):
        metrics.observe_feature_age(float(age))

    document = reporter.document()
    assert document["_aws"]["Timestamp"] == 1_700_000_000_500
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE and directive["Dimensions"] == [["Service"]]
    assert document["Service"] == "scorer"
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        name: cloudwatch.UNITS[name] for name in (
            cloudwatch.SCORING_REQUESTS, cloudwatch.ANSWERS, cloudwatch.DEGRADED_ANSWERS,
            cloudwatch.SHED_REQUESTS, cloudwatch.INVALID_REQUESTS, cloudwatch.SERVER_ERRORS,
            cloudwatch.SESSION_FEATURE_AGE_S)}
    assert {name: document[name] for name in (
        cloudwatch.SCORING_REQUESTS, cloudwatch.ANSWERS, cloudwatch.DEGRADED_ANSWERS,
        cloudwatch.SHED_REQUESTS, cloudwatch.INVALID_REQUESTS, cloudwatch.SERVER_ERRORS)} == {
        cloudwatch.SCORING_REQUESTS: 7, cloudwatch.ANSWERS: 5, cloudwatch.DEGRADED_ANSWERS: 1,
        cloudwatch.SHED_REQUESTS: 2, cloudwatch.INVALID_REQUESTS: 1,
        cloudwatch.SERVER_ERRORS: 1}
    ages = document[cloudwatch.SESSION_FEATURE_AGE_S]
    assert len(ages) == cloudwatch.EMF_MAX_VALUES and set(ages) <= set(map(float, range(150)))

    metrics.responses.labels("200").inc()
    again = reporter.document()
    assert again[cloudwatch.SCORING_REQUESTS] == 1 and again[cloudwatch.ANSWERS] == 0
    assert cloudwatch.SESSION_FEATURE_AGE_S not in again  # no samples: no values
    # /metrics shows the same counters.
    assert metrics.registry.get_sample_value("propensity_responses_total",
                                             {"code": "422"}) == 1


def test_a_reservoir_keeps_a_uniform_sample_of_bounded_size() -> None:
    reservoir = Reservoir(100, random.Random(7))
    for value in range(10_000):
        reservoir.add(float(value))
    sample = reservoir.drain()
    assert len(sample) == 100 and 3_000 < sum(sample) / 100 < 7_000
    assert reservoir.drain() == []


def test_a_document_takes_at_most_a_hundred_values_a_metric() -> None:
    with pytest.raises(ValueError, match="EMF takes 100"):
        cloudwatch.emf_document(NAMESPACE, {"Service": "scorer"},
                                {cloudwatch.SESSION_FEATURE_AGE_S: [1.0] * 101}, 0)


def test_a_scorer_writes_its_lines_and_a_last_one_when_it_stops(
        stack: Settings, tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path).model_copy(update={"metrics_namespace": NAMESPACE})
    register_shipped_model(settings)
    out = tmp_path / "scorer.out"
    with running_scorer(settings, stdout=out) as url:
        assert httpx.post(f"{url}/v1/propensity", json={"session_id": "s1"}).status_code == 200
        assert httpx.post(f"{url}/v1/propensity", json={"nope": 1}).status_code == 422
    documents = [json.loads(line) for line in out.read_text().splitlines() if '"_aws"' in line]
    assert documents, out.read_text()[-2000:]
    summed = {name: sum(d.get(name, 0) for d in documents) for name in (
        cloudwatch.SCORING_REQUESTS, cloudwatch.ANSWERS, cloudwatch.INVALID_REQUESTS)}
    assert summed == {cloudwatch.SCORING_REQUESTS: 2, cloudwatch.ANSWERS: 1,
                      cloudwatch.INVALID_REQUESTS: 1}
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == NAMESPACE for d in documents)
