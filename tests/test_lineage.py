"""Lineage records (propensity/lineage.py): the code's identity from git, from a built
package's record, or unknown; digests that change with what they identify; the text lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from propensity import lineage

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_is_this_work_tree_and_its_commit() -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    found = lineage.code_identity()
    assert found["commit"] == head and found["source"] == "git"
    assert isinstance(found["dirty"], bool)


def test_outside_a_work_tree_the_package_records_its_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lineage.git_identity(tmp_path) is None
    monkeypatch.setattr(lineage, "git_identity", lambda folder: None)
    monkeypatch.setattr(lineage, "BUILD_INFO", tmp_path / "build_info.json")
    assert lineage.code_identity() == {"commit": "unknown", "dirty": None, "source": "unknown"}
    (tmp_path / "build_info.json").write_text(json.dumps({"commit": "abc", "dirty": False}))
    assert lineage.code_identity() == {"commit": "abc", "dirty": False, "source": "build"}


def test_digests_follow_what_they_identify(tmp_path: Path) -> None:
    objects = [("b/date=2019-10-01/x.parquet", 10), ("b/date=2019-10-02/y.parquet", 20)]
    assert lineage.objects_sha256(objects) == lineage.objects_sha256(objects[::-1])
    assert lineage.objects_sha256(objects) != lineage.objects_sha256(
        [objects[0], (objects[1][0], 21)])
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"a" * 3_000_000)
    two.write_bytes(b"a" * 2_999_999 + b"b")
    assert lineage.file_sha256(one) != lineage.file_sha256(two)
    assert len(lineage.features_sha256()) == 64


def test_lines_say_the_code_the_data_and_the_libraries() -> None:
    record = {"code": {"commit": "abc", "dirty": True, "source": "git"},
              "data": {"kind": "lake", "first_day": "2019-10-01", "last_day": "2019-10-28",
                       "objects": 56, "objects_sha256": "d1"},
              "features_sha256": "f1", "libraries": {"lightgbm": "4.6.0"}}
    assert lineage.lines(record) == [
        "code: abc (with uncommitted changes) (from git)",
        "data: the lake, days 2019-10-01 .. 2019-10-28, 56 objects, sha256 d1",
        "feature definitions: sha256 f1", "libraries: lightgbm 4.6.0"]
    files = {**record, "data": {"kind": "files", "files": {"oct.csv.gz": "e1"}}}
    assert lineage.lines(files)[1] == "data: oct.csv.gz sha256 e1"
    assert lineage.lines({}) == ["no lineage recorded (trained before lineage was kept)"]
