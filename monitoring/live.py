"""`propensity monitor --day D`: the live quality and drift of each model version and variant
on day D.

The day's prediction log, labelled with the lake's outcomes (monitoring/outcomes.py), is added
batch by batch into score counts per (model version, variant) (propensity/quality.py) and into
histograms of the scored rows in the bins of the version's training profile
(propensity/drift.py). Then, per version and variant: ROC AUC and PR AUC, the reliability table
and expected calibration error, precision and recall in the top 5% and 10%, the positive rate,
the share of degraded answers and the version's validation AUC; and PSI per feature and for the
score, live against training. Stored under `<PROPENSITY_MONITORING_URI>/date=D/` as
quality.parquet, drift.parquet and report.md with its plots (a re-run rewrites them) and, when
PROPENSITY_METRICS_NAMESPACE is set, published to CloudWatch per variant, where
terraform/alarms.tf alarms on the design's rules (live AUC more than 5% below validation two days
running; a feature's PSI above 0.25, the score's above 0.2).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propensity import aws, cloudwatch, drift, model_store, quality
from propensity.lake import day_folder
from propensity.monitoring import report
from propensity.monitoring.outcomes import LABEL, labelled_batches
from propensity.monitoring.report import DayReport
from propensity.settings import Settings

# The design's alarm: live ROC AUC below this share of the version's validation AUC.
AUC_ALARM_RATIO = 0.95
QUALITY_FILE = "quality.parquet"
DRIFT_FILE = "drift.parquet"
# CloudWatch metrics per variant (the alarm reads LiveAucRatio of the champion).
CLOUDWATCH_METRICS = {"roc_auc": ("LiveRocAuc", "None"), "auc_ratio": ("LiveAucRatio", "None"),
                      "pr_auc": ("LivePrAuc", "None"), "ece": ("LiveCalibrationError", "None"),
                      "positive_rate": ("LivePositiveRate", "None"),
                      "degraded_share": ("LiveDegradedShare", "None"),
                      "points": ("LiveScoredAnswers", "Count")}
# ... and the drift per variant: the largest feature PSI, the score's PSI.
DRIFT_METRICS = {"feature": "MaxFeaturePsi", "score": "ScorePsi"}


@dataclass(frozen=True)
class MonitorDay:
    """What the daily monitor does: which day, and whether to store and publish."""

    day: date
    store: bool = True
    publish: bool = True


@dataclass
class Tally:
    """One model version and variant's day so far: its scores against outcomes, and its scored
    rows in its training profile's bins (None: the version has no profile)."""

    scores: quality.ScoreCounts
    inputs: drift.Histograms | None


def tally_day(settings: Settings, day: date, profile_of: Callable[[str], dict | None]
              ) -> dict[tuple[str, str], Tally]:
    """The day's log, labelled, added up per (model version, variant)."""
    tallies: dict[tuple[str, str], Tally] = {}
    for table in labelled_batches(settings, [day], ["model_version", "variant", "propensity",
                                                     "degraded", "features"]):
        groups = table.group_by(["model_version", "variant"]).aggregate([])
        for version, variant in zip(groups["model_version"].to_pylist(),
                                    groups["variant"].to_pylist(), strict=True):
            rows = table.filter((pc.field("model_version") == version)
                                & (pc.field("variant") == variant))
            if (version, variant) not in tallies:
                profile = profile_of(version)
                tallies[version, variant] = Tally(
                    quality.ScoreCounts(), drift.Histograms(profile) if profile else None)
            tally = tallies[version, variant]
            scores = rows["propensity"].to_numpy()
            tally.scores.add(scores, rows[LABEL].to_numpy(zero_copy_only=False),
                             rows["degraded"].to_numpy(zero_copy_only=False))
            if tally.inputs is not None:
                tally.inputs.add(_matrix(rows["features"], tally.inputs.profile, version),
                                 scores)
    return tallies


def _matrix(features: pa.ChunkedArray, profile: dict, version: str) -> np.ndarray:
    """The logged rows as a matrix in the version's column order."""
    width = len(profile["columns"])
    values = pc.list_flatten(features).to_numpy(zero_copy_only=False)
    if values.size != len(features) * width:
        raise ValueError(f"the log's rows of {version} do not have the {width} columns of its "
                         "training profile")
    return values.reshape(len(features), width)


def figures(day: date, counts: dict[tuple[str, str], quality.ScoreCounts],
            validation_auc: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per (model version, variant): the quality summary and its validation AUC."""
    rows = []
    for (version, variant), scored in sorted(counts.items()):
        summary = quality.summary(scored)
        validation = validation_auc.get(version)
        ratio = (summary["roc_auc"] / validation
                 if summary["roc_auc"] is not None and validation else None)
        rows.append({"day": day, "model_version": version, "variant": variant,
                     **{k: v for k, v in summary.items() if k != "reliability"},
                     "validation_auc": validation, "auc_ratio": ratio,
                     "below_validation": ratio is not None and ratio < AUC_ALARM_RATIO,
                     "reliability": json.dumps(summary["reliability"])})
    return rows


def drift_rows(day: date, tallies: dict[tuple[str, str], Tally]) -> list[dict[str, Any]]:
    """PSI per (model version, variant, feature or score), largest first within each."""
    return [{"day": day, "model_version": version, "variant": variant, **row}
            for (version, variant), tally in sorted(tallies.items())
            if tally.inputs is not None for row in drift.report(tally.inputs)]


def measure(settings: Settings, day: date) -> DayReport:
    """The day's quality and drift figures (nothing stored)."""
    profiles: dict[str, dict | None] = {}

    def profile_of(version: str) -> dict | None:
        if version not in profiles:
            data = model_store.read_file(settings, version, drift.PROFILE_FILE)
            profiles[version] = json.loads(data) if data is not None else None
        return profiles[version]

    tallies = tally_day(settings, day, profile_of)
    counts = {key: tally.scores for key, tally in tallies.items()}
    return DayReport(day, figures(day, counts, {
        version: model_store.validation_auc_of(settings, version) for version, _ in counts}),
        drift_rows(day, tallies))


def run(settings: Settings, request: MonitorDay) -> DayReport:
    """Measures the day; stores and publishes it as asked."""
    measured = measure(settings, request.day)
    if request.store and measured.quality:
        store(settings, measured)
    if request.publish and measured.quality and settings.metrics_namespace:
        publish(settings, measured)
    return measured


def store(settings: Settings, measured: DayReport) -> list[str]:
    """Writes the day's figures, report and plots (a re-run rewrites them); returns the keys."""
    bucket, prefix = aws.s3_location(settings.monitoring_uri)
    folder = day_folder(prefix, measured.day)
    files = {QUALITY_FILE: _parquet(measured.quality), **report.files(measured)}
    if measured.drift:
        files[DRIFT_FILE] = _parquet([{**row, "bins": json.dumps(row["bins"]),
                                       "training_shares": json.dumps(row["training_shares"]),
                                       "live_shares": json.dumps(row["live_shares"])}
                                      for row in measured.drift])
    s3 = aws.client("s3", settings)
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=folder + name, Body=body)
    return [folder + name for name in files]


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    return aws.parquet_bytes(pa.Table.from_pylist(rows))


def metric_data(measured: DayReport, at: datetime) -> list[dict[str, Any]]:
    """CloudWatch data points per variant: the points-weighted mean over its versions (a
    champion swapped during the day counts by its answers); the largest feature PSI and the
    score's PSI over its versions."""
    rows = measured.quality
    data = []
    for variant in sorted({row["variant"] for row in measured.drift}):
        mine = [row for row in measured.drift if row["variant"] == variant]
        for kind, name in DRIFT_METRICS.items():
            values = [row["psi"] for row in mine if row["kind"] == kind]
            if values:
                data.append({"MetricName": name, "Timestamp": at, "Value": max(values),
                             "Unit": "None",
                             "Dimensions": [{"Name": "Variant", "Value": variant}]})
    for variant in sorted({row["variant"] for row in rows}):
        mine = [row for row in rows if row["variant"] == variant]
        for field, (name, unit) in CLOUDWATCH_METRICS.items():
            known = [(row[field], row["points"]) for row in mine if row[field] is not None]
            if not known:
                continue
            value = (sum(v for v, _ in known) if field == "points" else
                     float(np.average([v for v, _ in known], weights=[w for _, w in known])))
            data.append({"MetricName": name, "Timestamp": at, "Value": float(value),
                         "Unit": unit, "Dimensions": [{"Name": "Variant", "Value": variant}]})
    return data


def publish(settings: Settings, measured: DayReport) -> None:
    """The day's figures to CloudWatch, stamped now: the alarm compares consecutive daily
    runs."""
    cloudwatch.put(settings, metric_data(measured, datetime.now(UTC)))


def read(settings: Settings, day: date, name: str = QUALITY_FILE) -> list[dict[str, Any]]:
    """A stored day's rows of one file (empty when the monitor has not run for it)."""
    bucket, prefix = aws.s3_location(settings.monitoring_uri)
    body = aws.get_object(aws.client("s3", settings), bucket, day_folder(prefix, day) + name)
    return [] if body is None else pq.read_table(io.BytesIO(body)).to_pylist()
