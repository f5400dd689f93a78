"""The monitor: binned quality figures against the row-wise definitions (sklearn), the A/B
statistics against scipy, then `propensity monitor` on a hand-made prediction log and lake in
moto's S3: every figure equal to an independent computation from the log as it was made, the
day stored and published to CloudWatch (moto), and the A/B counts per shopper."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import chi2_contingency
from sklearn.metrics import average_precision_score, roc_auc_score

from propensity import aws, drift, events, experiment, model_store, quality, rollout
from propensity.experiment import Conversions
from propensity.lake import day_folder
from propensity.model import COLUMN_NAMES
from propensity.monitoring import ab, live, report
from propensity.ops.testing import isolated
from propensity.rollout import CANARY, CHALLENGER, CHAMPION, SHADOW, Challenger
from propensity.serving.prediction_log import Prediction, object_key, to_table
from propensity.settings import Settings
from propensity.training import metrics as row_metrics

# The log is a replay's: answered today, each row scored for (as_of) its events' time in 2019;
# the monitor finds the purchases by the days scored for.
DAY = date(2026, 12, 6)
REPLAYED_AT = datetime(2026, 12, 6, 9, tzinfo=UTC)
NOON = datetime(2019, 11, 5, 12, tzinfo=UTC)


def _distinct_scores(n: int, seed: int) -> np.ndarray:
    """n scores, each the centre of its own bin: the binned figures are then exact."""
    rng = np.random.default_rng(seed)
    return (rng.choice(quality.SCORE_BINS, n, replace=False) + 0.5) / quality.SCORE_BINS


def _expected(score: np.ndarray, y: np.ndarray, degraded: np.ndarray) -> dict:
    """The figures from the rows, by their usual definitions."""
    order = np.argsort(-score, kind="stable")
    out = {"points": len(y), "positives": int(y.sum()), "positive_rate": y.mean(),
           "degraded_share": degraded.mean(), "roc_auc": roc_auc_score(y, score),
           "pr_auc": average_precision_score(y, score)}
    for fraction in quality.TOP_FRACTIONS:
        top = order[:max(1, round(fraction * len(y)))]
        out[f"precision_top{round(fraction * 100)}"] = y[top].mean()
        out[f"recall_top{round(fraction * 100)}"] = y[top].sum() / y.sum()
    table = row_metrics.reliability(y, score)
    out["ece"] = sum(r["points"] / len(y) * abs(r["observed_rate"] - r["mean_predicted"])
                     for r in table)
    return out


def _assert_figures(found: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_binned_figures_equal_the_row_wise_definitions() -> None:
    score = _distinct_scores(3000, seed=1)
    rng = np.random.default_rng(2)
    y = rng.random(3000) < score
    degraded = rng.random(3000) < 0.1
    counts = quality.ScoreCounts()
    for part in np.array_split(np.arange(3000), 7):  # added batch by batch, as the monitor does
        counts.add(score[part], y[part], degraded[part])
    summary = quality.summary(counts)
    _assert_figures(summary, _expected(score, y, degraded))
    expected_table = row_metrics.reliability(y, score)
    assert len(summary["reliability"]) == len(expected_table)
    for found, expected in zip(summary["reliability"], expected_table, strict=True):
        assert found == pytest.approx(expected)
    assert quality.roc_auc(quality.ScoreCounts()) is None


def test_ties_count_half_and_the_top_fraction_splits_a_tied_bin_pro_rata() -> None:
    counts = quality.ScoreCounts()
    counts.add(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0]), np.zeros(4))
    assert quality.roc_auc(counts) == 0.5
    assert quality.top(counts, 0.5) == {"flagged": 2, "precision": 0.5, "recall": 0.5}


def test_the_ab_statistics() -> None:
    control, treatment = Conversions(1000, 100), Conversions(1000, 130)
    found = experiment.compare(control, treatment)
    _, p_value, _, _ = chi2_contingency([[100, 900], [130, 870]], correction=False)
    assert found.p_value == pytest.approx(p_value)  # the pooled z-test is the 2x2 chi-square
    assert found.difference == pytest.approx(0.03)
    low, high = found.interval
    assert (high - low) / 2 == pytest.approx(1.959964 * np.sqrt(0.1 * 0.9 / 1000
                                                                 + 0.13 * 0.87 / 1000), rel=1e-6)
    # 10% baseline, +10% relative lift, 80% power, alpha 0.05: the textbook 14,751 per group.
    assert experiment.sample_size(0.10, 0.10) == 14_751
    assert experiment.compare(Conversions(0, 0), treatment) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        experiment.sample_size(0.0, 0.1)


# -- the monitor on a hand-made log and lake ------------------------------------------------

CANARY_PLAN = Challenger("v2", CANARY, 0.3)
SHIFTED = "event_count"  # the one input the live rows have moved


def _inputs(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Rows of the model's columns: counts, the one-hot last event type, some missing."""
    rng = np.random.default_rng(seed)
    matrix = rng.poisson(3.0, (n, len(COLUMN_NAMES))).astype(np.float64)
    matrix[rng.random(matrix.shape) < 0.05] = np.nan
    one_hot = [i for i, name in enumerate(COLUMN_NAMES) if "=" in name]
    matrix[:, one_hot] = 0.0
    matrix[np.arange(n), rng.choice(one_hot, n)] = 1.0
    matrix[:, COLUMN_NAMES.index(SHIFTED)] += shift
    return matrix


def _hand_made(sessions: int = 400) -> tuple[list[Prediction], dict[str, datetime], dict]:
    """Predictions of `sessions` sessions (3 each; users for the first 300, two sessions per
    user; then anonymous), variants by the canary's hash from the 21st session (the champion
    alone before), shadow scores for the first 50
    sessions, and purchases: every third session buys, after all its predictions or between
    its first and second; one buys after midnight; one shopper sees both variants."""
    scores = iter(_distinct_scores(sessions * 4 + 10, seed=3))
    inputs = iter(_inputs(sessions * 4 + 10, seed=4, shift=5.0))
    rows, purchases, labels = [], {}, {}
    for i in range(sessions):
        session, user = f"s{i}", (i // 2 if i < 300 else None)
        # The canary starts after the first 20 sessions were answered by the champion alone.
        variant = CHALLENGER if i >= 20 and rollout.answers_as_challenger(
            CANARY_PLAN, rollout.shopper_key(user, session)) else CHAMPION
        times = [NOON + timedelta(seconds=i, minutes=j) for j in range(3)]
        if i % 3 == 0:
            purchases[session] = (times[-1] + timedelta(minutes=1) if i % 6 == 0
                                  else times[0] + timedelta(seconds=30))
        if i == 1:
            purchases[session] = datetime(2019, 11, 6, 0, 10, tzinfo=UTC)
        for j, at in enumerate(times):
            rid = uuid.uuid4().hex
            bought = session in purchases and purchases[session] > at
            degraded = (i + j) % 10 == 0
            answered = REPLAYED_AT + (at - NOON)
            rows.append(Prediction(rid, answered.timestamp(), at.timestamp(), session, user, 7,
                                   "v2" if variant == CHALLENGER else "v1", variant,
                                   float(next(scores)), degraded, next(inputs)))
            labels[rid, variant] = bought
            if i < 50 and variant == CHAMPION:
                rows.append(rows[-1]._replace(model_version="v2", variant=SHADOW,
                                              propensity=float(next(scores))))
                labels[rid, SHADOW] = bought
    at = NOON + timedelta(hours=1)  # user 999 answered by both variants
    for variant, version in ((CHAMPION, "v1"), (CHALLENGER, "v2")):
        rid = uuid.uuid4().hex
        rows.append(Prediction(rid, (REPLAYED_AT + (at - NOON)).timestamp(), at.timestamp(),
                               "mixed", 999, 7, version, variant, float(next(scores)), False,
                               next(inputs)))
        labels[rid, variant] = False
    return rows, purchases, labels


def _lake_rows(purchases: dict[str, datetime], users: dict[str, int | None]) -> dict:
    """The purchases as lake events, by date folder (and a purchase of an unscored session)."""
    by_day: dict[date, list[dict]] = {}
    for session, at in [*purchases.items(), ("never-scored", NOON)]:
        by_day.setdefault(at.date(), []).append({
            "event_time": at, "event_type": "purchase", "product_id": 7, "price": 9.5,
            "user_id": users.get(session) or 0, "user_session": session,
            "event_id": uuid.uuid4().hex, events.ARRIVAL_TIME: at})
    return by_day


@pytest.fixture(scope="module")
def monitored(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    settings = isolated(stack, tmp_path_factory.mktemp("monitor")).model_copy(
        update={"metrics_namespace": f"PropensityTest{uuid.uuid4().hex[:8]}"})
    rows, purchases, labels = _hand_made()
    s3 = aws.client("s3", settings)
    bucket, prefix = aws.s3_location(settings.predictions_uri)
    s3.put_object(Bucket=bucket, Key=object_key(prefix, DAY, "hand", 0),
                  Body=aws.parquet_bytes(to_table(rows)))
    lake_bucket, lake_prefix = aws.s3_location(settings.events_uri)
    users = {r.session_id: r.user_id for r in rows}
    for day, events_of_day in _lake_rows(purchases, users).items():
        table = pa.Table.from_pylist(events_of_day, schema=events.LAKE_SCHEMA)
        out = pa.BufferOutputStream()
        pq.write_table(table, out)
        s3.put_object(Bucket=lake_bucket, Key=day_folder(lake_prefix, day) + "part-0.parquet",
                      Body=out.getvalue().to_pybytes())
    training = drift.profile(COLUMN_NAMES, _inputs(5000, seed=5), _distinct_scores(5000, 6))
    for version, auc in (("v1", 0.80), ("v2", 0.55)):
        model_store.put_version(settings, {
            "model.json": json.dumps({"metadata": {"validation": {"roc_auc": auc}}}).encode(),
            # v2 has no profile: a version trained before profiles existed
            **({drift.PROFILE_FILE: json.dumps(training).encode()} if version == "v1" else {}),
        }, version)
    return {"settings": settings, "rows": rows, "labels": labels}


@pytest.mark.integration
def test_the_day_figures_equal_an_independent_computation(monitored: dict) -> None:
    settings, rows, labels = monitored["settings"], monitored["rows"], monitored["labels"]
    measured = live.run(settings, live.MonitorDay(DAY))
    found = measured.quality
    groups = sorted({(r.model_version, r.variant) for r in rows})
    assert [(f["model_version"], f["variant"]) for f in found] == groups
    for figures in found:
        mine = [r for r in rows if (r.model_version, r.variant) == (
            figures["model_version"], figures["variant"])]
        score = np.array([r.propensity for r in mine])
        y = np.array([labels[r.request_id, r.variant] for r in mine])
        _assert_figures(figures, _expected(score, y, np.array([r.degraded for r in mine])))
        validation = {"v1": 0.80, "v2": 0.55}[figures["model_version"]]
        assert figures["auc_ratio"] == pytest.approx(figures["roc_auc"] / validation)
        assert figures["below_validation"] == (figures["roc_auc"] / validation < 0.95)
    assert sum(f["positives"] for f in found) > 0 and len(found) == 3

    stored = live.read(settings, DAY)
    assert [(r["model_version"], r["variant"], r["roc_auc"]) for r in stored] == [
        (f["model_version"], f["variant"], f["roc_auc"]) for f in found]
    cloudwatch = aws.client("cloudwatch", settings)
    answered = cloudwatch.get_metric_statistics(
        Namespace=settings.metrics_namespace, MetricName="LiveScoredAnswers",
        Dimensions=[{"Name": "Variant", "Value": CHAMPION}],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(hours=1), Period=86400, Statistics=["Sum"])
    assert answered["Datapoints"][0]["Sum"] == sum(r.variant == CHAMPION for r in rows)
    names = {m["MetricName"] for m in cloudwatch.list_metrics(
        Namespace=settings.metrics_namespace)["Metrics"]}
    assert {"LiveRocAuc", "LiveAucRatio", "LiveCalibrationError", "MaxFeaturePsi",
            "ScorePsi"} <= names


@pytest.mark.integration
def test_psi_flags_the_shifted_feature_only_and_the_report_shows_it(monitored: dict) -> None:
    settings = monitored["settings"]
    measured = live.measure(settings, DAY)
    champion = [r for r in measured.drift if (r["model_version"], r["variant"]) == (
        "v1", CHAMPION)]
    flagged = {r["name"] for r in champion if r["flagged"]}
    assert flagged == {SHIFTED}, [(r["name"], r["psi"]) for r in champion[:5]]
    score = next(r for r in champion if r["kind"] == "score")
    assert score["psi"] < drift.SCORE_PSI_FLAG  # scores drawn from the training distribution
    assert {r["model_version"] for r in measured.drift} == {"v1"}  # v2 has no profile
    # The PSI is the formula over the stored shares.
    shifted = next(r for r in champion if r["name"] == SHIFTED)
    assert shifted["psi"] == pytest.approx(drift.psi(shifted["training_shares"],
                                                     shifted["live_shares"]))
    assert shifted["live_rows"] == sum(1 for r in monitored["rows"]
                                       if (r.model_version, r.variant) == ("v1", CHAMPION))
    live.run(settings, live.MonitorDay(DAY, publish=False))
    bucket, prefix = aws.s3_location(settings.monitoring_uri)
    stored = {o["Key"].rsplit("/", 1)[1] for o in aws.client("s3", settings).list_objects_v2(
        Bucket=bucket, Prefix=day_folder(prefix, DAY))["Contents"]}
    assert {report.REPORT_FILE, live.QUALITY_FILE, live.DRIFT_FILE,
            f"drift-v1-champion-{SHIFTED}.png", "score-v1-champion.png"} <= stored
    text = report.text(measured)
    assert f"features above {drift.FEATURE_PSI_FLAG}: {SHIFTED}" in text
    assert len(live.read(settings, DAY, live.DRIFT_FILE)) == len(measured.drift)


def test_psi_by_hand() -> None:
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5))
    assert drift.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert drift.psi([1.0, 0.0], [1.0, 0.0]) == 0.0  # an empty bin stays finite


@pytest.mark.integration
def test_ab_counts_shoppers_once_and_leaves_out_those_who_saw_both(monitored: dict) -> None:
    rows, labels = monitored["rows"], monitored["labels"]
    result = ab.run(monitored["settings"], ab.AbTest(DAY, DAY, lift=0.1))
    expected: dict[str, dict[str, bool]] = {CHAMPION: {}, CHALLENGER: {}}
    started = min(r.answered_at for r in rows if r.variant == CHALLENGER)
    assert any(r.answered_at < started for r in rows)  # champion answers without a rival
    assert result.started == datetime.fromtimestamp(started, UTC)
    for r in rows:
        if r.variant != SHADOW and r.session_id != "mixed" and r.answered_at >= started:
            key = rollout.shopper_key(r.user_id, r.session_id)
            expected[r.variant][key] = (expected[r.variant].get(key, False)
                                        or labels[r.request_id, r.variant])
    assert result.mixed == 1
    for variant, shoppers in expected.items():
        assert result.conversions[variant] == Conversions(len(shoppers),
                                                          sum(shoppers.values()))
    assert result.comparison == experiment.compare(result.conversions[CHAMPION],
                                                   result.conversions[CHALLENGER])
    assert result.versions == {CHAMPION: ["v1"], CHALLENGER: ["v2"]}
    assert result.needed_per_variant == experiment.sample_size(
        result.conversions[CHAMPION].rate, 0.1)
    assert "shoppers per variant" in result.format()
    assert ab.run(monitored["settings"], ab.AbTest(DAY + timedelta(3), DAY + timedelta(3))
                  ).conversions == {}
