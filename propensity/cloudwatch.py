"""The CloudWatch metrics the system publishes, named once (terraform/alarms.tf alarms on these
names; tests/test_deploy_config.py holds every alarm to a name published here or by the
monitor), and the two ways they leave:

- PutMetricData (`put`), from the jobs: the streaming job per micro-batch, the daily batch and
  the retraining once per successful run, the monitor once a day (monitoring/live.py);
- the embedded metric format (`emf_document`), from the scorer: a JSON log line a minute per
  task, which CloudWatch Logs turns into metrics (serving/emf.py says why).

Nothing is published unless PROPENSITY_METRICS_NAMESPACE is set (terraform sets it).
"""

from __future__ import annotations

import logging
from typing import Any

from propensity import aws
from propensity.settings import Settings

log = logging.getLogger("propensity.cloudwatch")

# The streaming job, one data point per micro-batch (streaming/metrics.py).
STREAMING_BATCH_DURATION_MS = "StreamingBatchDurationMs"
STREAMING_INPUT_ROWS = "StreamingInputRows"
STREAMING_FRESHNESS_P50_S = "StreamingFreshnessP50Seconds"
# The daily batch and the retraining: 1 for each run that succeeded (batch/job.py,
# training/retrain.py); a day without one is what the "late" alarms watch.
DAILY_BATCH_SUCCEEDED = "DailyBatchSucceeded"
RETRAIN_SUCCEEDED = "RetrainSucceeded"
# The scorer, per task and minute, with the dimension SCORER_DIMENSIONS (serving/emf.py).
SCORER_DIMENSIONS = {"Service": "scorer"}
SCORING_REQUESTS = "ScoringRequests"  # every scoring request, 429s and 422s included
ANSWERS = "Answers"  # propensities answered (a batch request's each), shadow scores not
DEGRADED_ANSWERS = "DegradedAnswers"  # of the answers: without the online store's features
SHED_REQUESTS = "ShedRequests"  # refused with 429 (too many in progress)
INVALID_REQUESTS = "InvalidRequests"  # refused with 422 (a request the API does not take)
SERVER_ERRORS = "ServerErrors"  # answered 5xx
SESSION_FEATURE_AGE_S = "SessionFeatureAgeSeconds"  # samples: age of the session's features

UNITS = {
    STREAMING_BATCH_DURATION_MS: "Milliseconds", STREAMING_INPUT_ROWS: "Count",
    STREAMING_FRESHNESS_P50_S: "Seconds", DAILY_BATCH_SUCCEEDED: "Count",
    RETRAIN_SUCCEEDED: "Count", SCORING_REQUESTS: "Count", ANSWERS: "Count",
    DEGRADED_ANSWERS: "Count", SHED_REQUESTS: "Count", INVALID_REQUESTS: "Count",
    SERVER_ERRORS: "Count", SESSION_FEATURE_AGE_S: "Seconds",
}
# EMF takes at most this many values of one metric in one document.
EMF_MAX_VALUES = 100


def datum(name: str, value: float, **dimensions: str) -> dict[str, Any]:
    """One PutMetricData datum of a metric named here, in its unit."""
    found = {"MetricName": name, "Value": float(value), "Unit": UNITS[name]}
    if dimensions:
        found["Dimensions"] = [{"Name": k, "Value": v} for k, v in dimensions.items()]
    return found


def put(settings: Settings, data: list[dict[str, Any]], client: Any = None) -> None:
    """PutMetricData into PROPENSITY_METRICS_NAMESPACE (nothing when it is unset), 500 data a
    call (the API takes 1,000)."""
    if not settings.metrics_namespace or not data:
        return
    cloudwatch = client or aws.client("cloudwatch", settings)
    for start in range(0, len(data), 500):
        cloudwatch.put_metric_data(Namespace=settings.metrics_namespace,
                                   MetricData=data[start:start + 500])


def report_success(settings: Settings, name: str) -> None:
    """A run's success (1 of `name`); a failure to publish is logged, never raised: the run
    succeeded, and the alarm that misses the point is the right outcome."""
    try:
        put(settings, [datum(name, 1)])
    except Exception:  # any: logged, the run's result stands
        log.warning("could not publish %s", name, exc_info=True)


def emf_document(namespace: str, dimensions: dict[str, str],
                 values: dict[str, float | list[float]], timestamp_ms: int) -> dict[str, Any]:
    """One log line's document in CloudWatch's embedded metric format: `values` by metric
    name (a list: samples, at most EMF_MAX_VALUES; an empty list is left out)."""
    present = {name: value for name, value in values.items()
               if not (isinstance(value, list) and not value)}
    for name, value in present.items():
        if isinstance(value, list) and len(value) > EMF_MAX_VALUES:
            raise ValueError(f"{name}: {len(value)} values, EMF takes {EMF_MAX_VALUES}")
    return {
        "_aws": {"Timestamp": timestamp_ms, "CloudWatchMetrics": [{
            "Namespace": namespace, "Dimensions": [sorted(dimensions)],
            "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in present]}]},
        **dimensions, **present,
    }
