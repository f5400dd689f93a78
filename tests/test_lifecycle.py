"""The data lifecycle on the real stack (moto's S3, redis-server, Spark, Feast): compaction
leaves the batch, the training set and Feast's retrieval with the same rows; forgetting a
shopper leaves no row of theirs anywhere and every other shopper's rows and features as they
were; retention removes the days past it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FileSelector
from pyspark.sql import SparkSession

from propensity import aws, cloudwatch, events, feature_repo, retention
from propensity import features as F
from propensity.batch.job import run as run_batch
from propensity.batch.job import run_and_print
from propensity.batch.request import BatchRun
from propensity.compaction import compact, compact_day, layouts
from propensity.feature_repo.retrieval import historical_features
from propensity.lake import (
    Dataset,
    archive_uri,
    dataset_uri,
    day_folder,
    day_objects,
    every_object,
    filesystem_of,
    list_objects,
    read_table,
)
from propensity.ops.pipelines import DatasetRequest, build_dataset
from propensity.ops.testing import isolated, write_like_the_stream
from propensity.predictions import LOG_SCHEMA
from propensity.privacy.forget import audit_uri, forget, payload_pattern
from propensity.samples import COSMETICS_OCTOBER
from propensity.settings import Settings
from propensity.spark import spark_session

DAY = date(2019, 10, 1)
DAY_31 = date(2019, 10, 31)  # the October sample's last hours
MICRO_BATCHES = 40


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_session("propensity-tests", "local[2]")
    yield session
    session.stop()


def counts(settings: Settings, day: date = DAY) -> dict[str, int]:
    """Objects a reader takes in the day's folder of the lake and of each session view."""
    trees = {"lake": settings.events_uri,
             **{view: archive_uri(settings, view) for view in F.ARCHIVE_COLUMNS}}
    return {name: len(day_objects(*filesystem_of(settings, uri), day))
            for name, uri in trees.items()}


def offline(settings: Settings, view: str) -> pd.DataFrame:
    frame = read_table(settings, archive_uri(settings, view)).to_pandas()
    return frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)


def test_compaction_leaves_the_batch_the_training_set_and_feast_the_same_rows(
        stack: Settings, spark: SparkSession, tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path)
    write_like_the_stream(settings, COSMETICS_OCTOBER, MICRO_BATCHES)
    small = counts(settings)  # the sample's October 1st, then a few hours of the 31st
    assert min(small.values()) > MICRO_BATCHES * 3 // 4

    def everything() -> tuple[pd.DataFrame, ...]:
        batch = run_batch(settings, BatchRun(as_of=DAY), spark)
        out = tmp_path / "set.parquet"
        build_dataset(settings, DatasetRequest(out))
        points = pd.read_parquet(out).sort_values([F.SESSION_ID, F.EVENT_TIMESTAMP])
        sessions = points[[F.SESSION_ID, F.EVENT_TIMESTAMP]].drop_duplicates()
        # Feast's retrieval straight from the archive, at every point's moment.
        direct = historical_features(feature_repo.store(settings), settings, sessions,
                                     [F.SESSION_VIEW]).sort_values(list(sessions.columns))
        lake = read_table(settings, settings.events_uri).to_pandas().sort_values("event_id")
        return (pd.DataFrame([batch.events]), offline(settings, F.USER_VIEW),
                offline(settings, F.PRODUCT_VIEW), points.reset_index(drop=True),
                direct.reset_index(drop=True), lake.reset_index(drop=True))

    before = everything()
    assert len(before[3]) > 10_000  # the training set's points

    done = compact(settings, list(Dataset), DAY)
    by_tree = {result.uri: result for result in done}
    assert by_tree[settings.events_uri].objects_before == small["lake"]
    assert counts(settings) == dict.fromkeys(["lake", *F.ARCHIVE_COLUMNS], 1)
    after = everything()
    for was, now in zip(before, after, strict=True):
        pd.testing.assert_frame_equal(was, now)
    assert all(r.objects_before == r.objects_after for r in compact(settings, list(Dataset),
                                                                     DAY))


def test_the_batch_compacts_the_day_before_its_own_and_reports_its_success(
        stack: Settings, spark: SparkSession, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    namespace = f"Test{tmp_path.name[-12:]}"
    settings = isolated(stack, tmp_path).model_copy(update={"metrics_namespace": namespace})
    write_like_the_stream(settings, COSMETICS_OCTOBER, 12)
    run_and_print(settings, BatchRun(as_of=DAY + timedelta(days=1)), as_json=True)
    summary = json.loads(capsys.readouterr().out)
    assert counts(settings) == dict.fromkeys(["lake", *F.ARCHIVE_COLUMNS], 1)
    assert any(line.startswith(f"{settings.events_uri} {DAY}: 11 objects")
               for line in summary["compacted"]), summary["compacted"]
    # The "batch late" alarm's metric, in moto's CloudWatch.
    listed = aws.client("cloudwatch", settings).list_metrics(Namespace=namespace)["Metrics"]
    assert [m["MetricName"] for m in listed] == [cloudwatch.DAILY_BATCH_SUCCEEDED]


# --- forgetting a shopper -----------------------------------------------------------------

def _quarantine_row(payload: str, arrival: datetime) -> pa.Table:
    given = {events.PAYLOAD: [payload], events.REASON: [events.Reason.BAD_PRICE.value],
             events.DETAIL: ["price is not a number"], events.ARRIVAL_TIME: [arrival]}
    return pa.table({f.name: pa.array(given.get(f.name, [None]), f.type)
                     for f in events.QUARANTINE_SCHEMA})


def _log_rows(lake: pd.DataFrame) -> pa.Table:
    """One logged answer per session's last event, as the scorer logs them."""
    last = lake.sort_values("event_time").groupby("user_session").tail(1)
    n = len(last)
    return pa.table({
        "request_id": [f"r{i}" for i in range(n)],
        "answered_at": pa.array(last["event_time"], LOG_SCHEMA.field("answered_at").type),
        "as_of": pa.array(last["event_time"], LOG_SCHEMA.field("as_of").type),
        "session_id": last["user_session"].tolist(), "user_id": last["user_id"].tolist(),
        "product_id": last["product_id"].tolist(), "model_version": ["v1"] * n,
        "variant": ["champion"] * n, "propensity": [0.1] * n, "degraded": [False] * n,
        "features": [[1.0, 2.0]] * n}, schema=LOG_SCHEMA)


def _redis(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    client = feature_repo.redis_client(settings)
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


def _every_row(settings: Settings) -> dict[str, pa.Table]:
    """Every object's rows (visible or not), dataset by dataset."""
    found = {}
    for dataset in Dataset:
        filesystem, root = filesystem_of(settings, dataset_uri(settings, dataset))
        tables = []
        for path, _ in every_object(filesystem, root):
            with filesystem.open_input_file(path) as handle:
                tables.append(pq.ParquetFile(handle).read())
        found[dataset.value] = pa.concat_tables(tables, promote_options="permissive")
    return found


def _theirs(table: pa.Table, user_id: int, sessions: set[str]) -> pa.Array:
    mask = pa.array([False] * table.num_rows)
    if F.USER_ID in table.column_names:
        mask = pc.or_(mask, pc.fill_null(pc.equal(table[F.USER_ID], user_id), False))
    for column in (F.SESSION_ID, "user_session"):
        if column in table.column_names:
            mask = pc.or_(mask, pc.fill_null(pc.is_in(table[column],
                                                      pa.array(sorted(sessions))), False))
    if events.PAYLOAD in table.column_names:
        mask = pc.or_(mask, pc.fill_null(pc.match_substring_regex(
            table[events.PAYLOAD], payload_pattern(user_id, sessions)), False))
    return mask


def test_forget_removes_a_shopper_everywhere_and_nobody_else(
        stack: Settings, spark: SparkSession, tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path)
    arrival = datetime(2019, 10, 1, 12, tzinfo=UTC)
    write_like_the_stream(settings, COSMETICS_OCTOBER, 8, arrival)
    run_batch(settings, BatchRun(as_of=DAY), spark)
    lake = read_table(settings, settings.events_uri).to_pandas()
    # A shopper with several sessions and a purchase: in every dataset and view.
    per_user = lake.groupby("user_id").agg(sessions=("user_session", "nunique"),
                                           purchases=("event_type",
                                                      lambda s: (s == "purchase").sum()))
    user_id = int(per_user[(per_user.sessions > 1) & (per_user.purchases > 0)].index[0])
    sessions = set(lake.loc[lake.user_id == user_id, "user_session"])
    mine = lake[lake.user_id == user_id].iloc[0]
    filesystem, aws_key = filesystem_of(settings, settings.quarantine_uri)
    for name, payload in (("theirs", f"2019-10-01 10:00:00 UTC,view,{mine.product_id},1,,,"
                                     f"abc,{user_id},{mine.user_session}"),
                          ("other", "2019-10-01 10:00:00 UTC,view,5,1,,,abc,1,s-1")):
        pq.write_table(_quarantine_row(payload, arrival),
                       day_folder(aws_key, DAY) + f"{name}.parquet", filesystem=filesystem)
    log_fs, log_root = filesystem_of(settings, settings.predictions_uri)
    pq.write_table(_log_rows(lake), day_folder(log_root, DAY) + "scorer-1.parquet",
                   filesystem=log_fs)
    # A compaction that stopped after its commit: the replaced objects still hold them.
    (layout,) = layouts(settings, Dataset.LAKE)

    def stop() -> None:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        compact_day(settings, layout, DAY, after_commit=stop)
    before_rows, before_online = _every_row(settings), _redis(settings)
    for name, table in before_rows.items():
        assert pc.sum(_theirs(table, user_id, sessions)).as_py(), name

    record = forget(settings, user_id)

    after_rows, after_online = _every_row(settings), _redis(settings)
    for name, table in after_rows.items():
        assert not pc.any(_theirs(table, user_id, sessions)).as_py(), name
        others = before_rows[name].filter(pc.invert(_theirs(before_rows[name], user_id,
                                                            sessions)))
        key = [(c, "ascending") for c in others.column_names if c != "features"]
        assert table.sort_by(key).equals(others.sort_by(key)), name
        removed = record.removed[name].rows
        assert removed == before_rows[name].num_rows - table.num_rows > 0, name
    gone = before_online.keys() - after_online.keys()
    assert len(gone) == record.online_keys >= 1 + len(sessions)
    assert {k: after_online[k] for k in after_online} == {
        k: v for k, v in before_online.items() if k not in gone}
    assert record.sessions == len(sessions)

    # The audit record: counts, no user id, no session.
    audit_fs, audit_root = filesystem_of(settings, audit_uri(settings))
    (path,) = [info.path for info in audit_fs.get_file_info(FileSelector(audit_root))]
    with audit_fs.open_input_stream(path) as stream:
        text = stream.read().decode()
    assert str(user_id) not in text and not any(s in text for s in sessions)
    assert json.loads(text)["removed"]["lake"]["rows"] == record.removed["lake"].rows

    again = forget(settings, user_id)
    assert again.total_rows() == 0 and again.online_keys == 0


def test_retention_removes_the_days_past_it(stack: Settings, tmp_path: Path) -> None:
    settings = isolated(stack, tmp_path).model_copy(update={"lake_retention_days": 30,
                                                            "quarantine_retention_days": 0})
    write_like_the_stream(settings, COSMETICS_OCTOBER, 2)
    for dataset in (Dataset.LAKE, Dataset.QUARANTINE):
        filesystem, root = filesystem_of(settings, dataset_uri(settings, dataset))
        pq.write_table(pa.table({"x": [1]}), day_folder(root, DAY) + "old.parquet",
                       filesystem=filesystem)
    lake = filesystem_of(settings, settings.events_uri)
    on_the_day, later = len(day_objects(*lake, DAY)), len(day_objects(*lake, DAY_31))
    # Kept 30 days after the day's end: through DAY + 30, gone on DAY + 31.
    assert retention.apply(settings, list(Dataset), today=DAY + timedelta(days=30)) == []
    dry = retention.apply(settings, list(Dataset), today=DAY + timedelta(days=31),
                          dry_run=True)
    assert [(e.dataset, e.objects) for e in dry] == [(Dataset.LAKE, on_the_day)]
    assert len(day_objects(*lake, DAY)) == on_the_day
    assert retention.apply(settings, list(Dataset), today=DAY + timedelta(days=31)) == dry
    assert day_objects(*lake, DAY) == [] and len(day_objects(*lake, DAY_31)) == later > 0
    assert list_objects(settings, settings.quarantine_uri)  # 0: kept forever
    assert list_objects(settings, archive_uri(settings, F.SESSION_VIEW))  # 395 days
