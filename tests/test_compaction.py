"""Compaction's protocol (propensity/compaction.py, the readers' side in propensity/lake.py):
each row visible exactly once before, during (crashes included) and after, rows written
meanwhile kept, reruns idempotent. On a local folder (the protocol is the filesystem's
put/list/delete, the same calls on S3); the same datasets on S3 through the batch, the
training set and Feast's retrieval are in test_lifecycle.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from propensity.compaction import (
    Compacted,
    Layout,
    NotClosed,
    compact_day,
    outputs_needed,
    row_slices,
)
from propensity.lake import (
    COMPACTED_PREFIX,
    MANIFEST,
    Dataset,
    Manifest,
    day_folder,
    read_table,
    visible_names,
)
from propensity.settings import Settings

DAY = date(2019, 10, 1)
LATER = datetime(2019, 10, 3, tzinfo=UTC)


class Crash(Exception):
    pass


def write_parts(root: Path, day: date, parts: int, rows: int = 50, first: int = 0) -> None:
    folder = Path(day_folder(str(root), day))
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(first, first + parts):
        ids = list(range(part * rows, (part + 1) * rows))
        pq.write_table(pa.table({
            "user_session": [f"s{i % 7}" for i in ids],
            "event_time": pa.array([datetime(2019, 10, 1, tzinfo=UTC) + timedelta(seconds=i)
                                    for i in ids], pa.timestamp("us", tz="UTC")),
            "event_id": [f"e{i}" for i in ids],
        }), folder / f"batch-{part:012d}-00000.parquet")


def rows(root: Path) -> list[str]:
    table = read_table(Settings(), str(root))
    return sorted(table.column("event_id").to_pylist()) if table is not None else []


def objects(root: Path, day: date = DAY) -> list[str]:
    return sorted(p.name for p in Path(day_folder(str(root), day)).iterdir())


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Layout, Path]:
    root = tmp_path / "events"
    write_parts(root, DAY, 30)
    write_parts(root, DAY + timedelta(days=1), 3, first=100)
    return Layout(Dataset.LAKE, str(root), ("user_session", "event_time", "event_id")), root


def test_a_day_becomes_one_sorted_file_and_a_rerun_does_nothing(lake) -> None:
    layout, root = lake
    before = rows(root)
    done = compact_day(Settings(), layout, DAY, now=LATER)
    assert (done.objects_before, done.objects_after, done.rows) == (30, 1, 1500)
    assert rows(root) == before  # the other day untouched, this one's rows all there once
    (output,) = [n for n in objects(root) if n.endswith(".parquet")]
    assert output.startswith(COMPACTED_PREFIX) and MANIFEST in objects(root)
    table = pq.read_table(Path(day_folder(str(root), DAY)) / output)
    keys = list(zip(table["user_session"].to_pylist(), table["event_time"].to_pylist(),
                    strict=True))
    assert keys == sorted(keys)
    again = compact_day(Settings(), layout, DAY, now=LATER)
    assert (again.objects_before, again.objects_after, again.rows) == (1, 1, 0)
    assert "nothing to do" in again.format()
    assert len(objects(root, DAY + timedelta(days=1))) == 3


def test_a_crash_before_the_commit_shows_the_small_objects_and_a_rerun_finishes(lake) -> None:
    layout, root = lake
    before = rows(root)

    def crash() -> None:
        assert rows(root) == before  # the written outputs are not taken yet
        raise Crash

    with pytest.raises(Crash):
        compact_day(Settings(), layout, DAY, now=LATER, after_write=crash)
    assert rows(root) == before
    assert sum(n.startswith(COMPACTED_PREFIX) for n in objects(root)) == 1
    done = compact_day(Settings(), layout, DAY, now=LATER)
    assert (done.objects_before, done.objects_after, done.removed_leftovers) == (30, 1, 1)
    assert rows(root) == before and len(objects(root)) == 2  # the output and the manifest


def test_a_crash_after_the_commit_shows_the_outputs_and_a_rerun_removes_the_rest(lake) -> None:
    layout, root = lake
    before = rows(root)
    with pytest.raises(Crash):
        compact_day(Settings(), layout, DAY, now=LATER,
                    after_commit=lambda: (_ for _ in ()).throw(Crash))
    assert len(objects(root)) == 32  # 30 small, the output, the manifest
    assert rows(root) == before
    done = compact_day(Settings(), layout, DAY, now=LATER)
    assert (done.objects_before, done.objects_after, done.removed_leftovers) == (1, 1, 30)
    assert rows(root) == before and len(objects(root)) == 2


def test_objects_written_while_it_runs_stay_visible_and_are_compacted_next_time(lake) -> None:
    layout, root = lake
    write_during = lambda: write_parts(root, DAY, 2, first=200)  # noqa: E731
    compact_day(Settings(), layout, DAY, now=LATER, after_write=write_during)
    everything = rows(root)
    assert len(everything) == 33 * 50 + 100 and len(set(everything)) == len(everything)
    done = compact_day(Settings(), layout, DAY, now=LATER)
    assert (done.objects_before, done.objects_after) == (3, 1)
    assert rows(root) == everything
    manifest = Manifest.from_json((Path(day_folder(str(root), DAY)) / MANIFEST).read_bytes())
    assert len(manifest.replaced) == 33  # the first run's inputs stay replaced


def test_a_day_still_written_is_refused(lake) -> None:
    layout, root = lake
    settings = Settings()
    end = datetime(2019, 10, 2, tzinfo=UTC)
    with pytest.raises(NotClosed, match="PROPENSITY_WATERMARK_DELAY_S"):
        compact_day(settings, layout, DAY, now=end + timedelta(seconds=30))
    assert len(objects(root)) == 30
    done = compact_day(settings, layout, DAY,
                       now=end + timedelta(seconds=settings.watermark_delay_s))
    assert done.objects_after == 1


def test_file_counts_follow_the_target_size() -> None:
    mb = 1 << 20
    assert [outputs_needed(n, 128 * mb) for n in (0, 1, 128 * mb, 128 * mb + 1)] == [1, 1, 1, 2]
    assert row_slices(10, 3) == [(0, 4), (4, 4), (8, 2)]
    assert row_slices(0, 1) == []
    assert sum(length for _, length in row_slices(1_000_001, 7)) == 1_000_001


def test_what_a_reader_takes_of_a_folder() -> None:
    names = ["batch-1.parquet", "batch-2.parquet", "compacted-r1-00000.parquet",
             "compacted-r0-00000.parquet", "batch-3.parquet"]
    assert visible_names(names, None) == ["batch-1.parquet", "batch-2.parquet",
                                          "batch-3.parquet"]
    manifest = Manifest("r1", frozenset({"compacted-r1-00000.parquet"}),
                        frozenset({"batch-1.parquet", "batch-2.parquet"}))
    assert visible_names(names, manifest) == ["compacted-r1-00000.parquet", "batch-3.parquet"]
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_summary_line_says_what_happened() -> None:
    line = Compacted("s3://b/events", DAY, 120, 2, 1000, 30 << 20, 10 << 20, 3).format()
    assert line == ("s3://b/events 2019-10-01: 120 objects (30.0 MB) -> 2 (10.0 MB), "
                    "1,000 rows; removed 3 left by an earlier run")
