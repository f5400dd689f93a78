"""The streaming job's own CloudWatch metrics (when PROPENSITY_METRICS_NAMESPACE is set):
micro-batch duration, input rows and feature freshness, one data point each per batch. The
deployment alarms on the batch duration (terraform/alarms.tf). A failed publish is logged
and dropped: metrics never stop the job."""

from __future__ import annotations

import logging
from typing import Any

from propensity import aws, cloudwatch
from propensity.settings import Settings

log = logging.getLogger(__name__)


def batch_metrics(duration_ms: float, input_rows: int, freshness_p50_s: float | None
                  ) -> list[dict[str, Any]]:
    """CloudWatch metric data of one micro-batch."""
    data = [cloudwatch.datum(cloudwatch.STREAMING_BATCH_DURATION_MS, duration_ms),
            cloudwatch.datum(cloudwatch.STREAMING_INPUT_ROWS, input_rows)]
    if freshness_p50_s is not None:
        data.append(cloudwatch.datum(cloudwatch.STREAMING_FRESHNESS_P50_S, freshness_p50_s))
    return data


class CloudWatchMetrics:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self._client = client

    def publish(self, data: list[dict[str, Any]]) -> None:
        try:
            if self._client is None:
                self._client = aws.client("cloudwatch", self.settings)
            cloudwatch.put(self.settings, data, self._client)
        except Exception:
            log.warning("could not publish streaming metrics", exc_info=True)
