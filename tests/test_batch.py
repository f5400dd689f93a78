"""The daily batch on real components: real Spark (local[2]), moto S3, redis-server, Feast."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from propensity import events, feature_repo
from propensity import features as F
from propensity.batch import aggregates, checks
from propensity.batch.errors import BatchError
from propensity.batch.job import BatchSummary, day_range, run
from propensity.batch.request import BatchRun
from propensity.feature_repo.retrieval import historical_features
from propensity.lake import archive_uri, read_table
from propensity.ops.testing import isolated, write_csv
from propensity.samples import COSMETICS_OCTOBER
from propensity.settings import Settings
from propensity.spark import spark_session
from tests import batch_oracle

DAYS = (date(2019, 10, 1), date(2019, 10, 15), date(2019, 10, 31))


def batch_args(*imports: Path, first: date | None = None, last: date | None = None,
               as_of: date | None = None) -> BatchRun:
    return BatchRun(tuple(imports), as_of, first, last)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_session("propensity-tests", "local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def october(stack: Settings, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Settings, BatchSummary]:
    settings = isolated(stack, tmp_path_factory.mktemp("october"))
    return settings, run(settings, batch_args(COSMETICS_OCTOBER), spark)


def distinct_events(path: Path) -> pd.DataFrame:
    return events.validate_file(path).valid.drop_duplicates("event_id")


def offline_as_of(settings: Settings, view: str, key: str, day: date) -> pd.DataFrame:
    rows = read_table(settings, archive_uri(settings, view)).to_pandas()
    rows = rows[rows[F.EVENT_TIMESTAMP] <= batch_oracle.snapshot_time(day)]
    return rows.sort_values(F.EVENT_TIMESTAMP).drop_duplicates(key, keep="last").set_index(key)


def assert_same(got: pd.DataFrame, want: pd.DataFrame, specs: tuple[F.Feature, ...]) -> None:
    assert sorted(got.index) == sorted(want.index)
    got = got.loc[want.index]
    for feature in specs:
        left, right = got[feature.name], want[feature.name]
        if feature.dtype in ("int64", "float64"):
            np.testing.assert_allclose(left.astype(float), right.astype(float), rtol=1e-9,
                                       equal_nan=True, err_msg=feature.name)
        elif feature.dtype == "timestamp":
            assert (pd.to_datetime(left, utc=True).fillna(pd.Timestamp(0, tz="UTC")) ==
                    pd.to_datetime(right, utc=True).fillna(pd.Timestamp(0, tz="UTC"))).all()
        else:
            assert left.fillna("").astype(str).tolist() == right.fillna("").astype(str).tolist()


def test_import_accounts_for_every_row(october: tuple[Settings, BatchSummary]) -> None:
    settings, summary = october
    (imported,) = summary.imports
    assert imported.read == imported.valid + sum(imported.invalid.values())
    assert imported.duplicates > 0  # the raw data repeats events
    lake = read_table(settings, settings.events_uri).to_pandas()
    assert len(lake) == imported.written == lake["event_id"].nunique()
    assert imported.days == ["2019-10-01", "2019-10-31"]
    assert (summary.first_day, summary.last_day) == ("2019-10-01", "2019-10-31")
    assert summary.events == imported.written


@pytest.mark.parametrize("day", DAYS, ids=str)
def test_features_equal_an_independent_computation(october: tuple[Settings, BatchSummary],
                                                   day: date) -> None:
    settings, _ = october
    source = distinct_events(COSMETICS_OCTOBER)
    assert_same(offline_as_of(settings, F.USER_VIEW, F.USER_ID, day),
                batch_oracle.user_features(source, day), F.USER_FEATURES)
    assert_same(offline_as_of(settings, F.PRODUCT_VIEW, F.PRODUCT_ID, day),
                batch_oracle.product_features(source, day), F.PRODUCT_FEATURES)


def test_feast_serves_the_latest_snapshot_online_and_offline(
        october: tuple[Settings, BatchSummary]) -> None:
    settings, _ = october
    last = DAYS[-1]
    source = distinct_events(COSMETICS_OCTOBER)
    users = batch_oracle.user_features(source, last)
    users = users.loc[users.sort_values(F.LIFETIME_PURCHASE_COUNT.name).index[-50:]]
    products = batch_oracle.product_features(source, last).head(50)
    store = feature_repo.store(settings)
    for view, key, want, specs in ((F.USER_VIEW, F.USER_ID, users, F.USER_FEATURES),
                                   (F.PRODUCT_VIEW, F.PRODUCT_ID, products, F.PRODUCT_FEATURES)):
        online = store.get_online_features(
            features=[f"{view}:{f.name}" for f in specs],
            entity_rows=[{key: int(k)} for k in want.index]).to_df().set_index(key)
        assert_same(online, want, specs)
    # Offline: Feast's point-in-time join just after the last snapshot, and just before it.
    points = pd.DataFrame({F.USER_ID: users.index.to_numpy(),
                           F.PRODUCT_ID: products.index.to_numpy(),
                           F.EVENT_TIMESTAMP: batch_oracle.snapshot_time(last)})
    joined = historical_features(store, settings, points, views=[F.USER_VIEW, F.PRODUCT_VIEW])
    assert_same(joined.set_index(F.USER_ID), users, F.USER_FEATURES)
    assert_same(joined.set_index(F.PRODUCT_ID), products, F.PRODUCT_FEATURES)
    earlier = points.assign(**{F.EVENT_TIMESTAMP: points[F.EVENT_TIMESTAMP] - pd.Timedelta("1us")})
    joined = historical_features(store, settings, earlier, views=[F.USER_VIEW])
    assert_same(joined.set_index(F.USER_ID),
                batch_oracle.user_features(source, date(2019, 10, 30)).reindex(users.index),
                F.USER_FEATURES)


def test_feast_cli_apply_and_materialize_incremental_continue_from_the_batch(
        october: tuple[Settings, BatchSummary]) -> None:
    settings, _ = october
    env = {**os.environ, **settings.to_env()}
    feast = [str(Path(sys.executable).parent / "feast"), "-c", str(feature_repo.REPO)]
    for command in (["apply"], ["materialize-incremental", "2019-11-01T00:00:00", "--views",
                                F.USER_VIEW, "--views", F.PRODUCT_VIEW]):
        done = subprocess.run([*feast, *command], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]


def test_rerun_rewrites_the_same_rows(october: tuple[Settings, BatchSummary],
                                      spark: SparkSession) -> None:
    settings, first = october
    again = run(settings, batch_args(COSMETICS_OCTOBER), spark)
    assert again.rows == first.rows and again.online == first.online
    assert again.imports[0].written == first.imports[0].written
    lake = read_table(settings, settings.events_uri)
    assert lake.num_rows == first.imports[0].written  # the import overwrote itself


def test_validation_gate_blocks_bad_data_and_publishes_nothing(
        stack: Settings, spark: SparkSession, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = isolated(stack, tmp_path)
    sample = write_csv(tmp_path / "day.csv", [
        ["2019-10-01 10:00:00 UTC", "view", "1", "", "", "", "5.0", "7", "s1"],
        ["2019-10-01 10:01:00 UTC", "purchase", "1", "", "", "", "5.0", "7", "s1"],
    ])
    computed = aggregates.product_snapshots

    def corrupted(events):  # a defect upstream: counts gone negative
        frame = computed(events)
        return frame.withColumn(F.VIEW_COUNT_30D.name, frame[F.VIEW_COUNT_30D.name] - 5)

    monkeypatch.setattr(aggregates, "product_snapshots", corrupted)
    with pytest.raises(checks.ValidationError) as failed:
        run(settings, batch_args(sample), spark)
    assert f"{F.VIEW_COUNT_30D.name} < 0" in str(failed.value)
    assert "nothing was published" in str(failed.value)
    assert read_table(settings, settings.features_uri) is None
    assert feature_repo.redis_client(settings).dbsize() == 0


def test_checks_report_each_failure() -> None:
    rows = pd.DataFrame({F.USER_ID: [1, 1, None], F.EVENT_TIMESTAMP: pd.to_datetime(
        ["2019-10-02", "2019-10-02", "2019-10-02"], utc=True),
        F.LIFETIME_PURCHASE_COUNT.name: [1, -1, 2], F.LIFETIME_SESSION_COUNT.name: [1, 1, 0],
        F.AVG_ORDER_VALUE_90D.name: [2.0, None, None],
        F.LAST_PURCHASE_AT.name: pd.to_datetime(["2019-10-03", None, None], utc=True),
        F.PREFERRED_PRODUCT_CATEGORY.name: ["a", None, None]})
    report = checks.CheckReport()
    checks.check_view(report, F.USER_VIEW, F.USER_ID, rows, F.USER_VIEW)
    text = report.render()
    for failure in ("user_id is null", "lifetime_purchase_count < 0", "repeated",
                    "lifetime_session_count < 1", "last_purchase_at after the snapshot",
                    f"purchases without {F.LAST_PURCHASE_AT.name}"):
        assert failure in text, failure


def test_day_range_from_the_arguments() -> None:
    days = [date(2019, 10, 1), date(2019, 10, 31)]
    assert day_range(batch_args(), [], days) == (days[1], days[1])
    assert day_range(batch_args(), ["2019-10-05", "2019-10-01"], days) == (
        date(2019, 10, 1), date(2019, 10, 5))
    assert day_range(batch_args(as_of=days[0]), [], days) == (days[0], days[0])
    assert day_range(batch_args(first=days[0], last=days[1]), [], []) == tuple(days)
    for bad in ({"first": days[0]}, {"first": days[1], "last": days[0]},
                {"as_of": days[0], "first": days[0], "last": days[1]}):
        with pytest.raises(BatchError):  # a request that cannot be is refused when it is made
            batch_args(**bad)
    with pytest.raises(BatchError, match="empty"):
        day_range(batch_args(), [], [])
