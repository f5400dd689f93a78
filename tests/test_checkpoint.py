"""The streaming job's parallelism, recorded with its checkpoint (no Spark needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from propensity.settings import Settings
from propensity.streaming.checkpoint import (
    LAYOUT_FILE,
    Checkpoint,
    CheckpointFromEarlierJob,
    CheckpointLayoutMismatch,
    Layout,
    complete_layout,
    resolve_layout,
)


def test_a_new_checkpoint_takes_the_settings_and_fills_auto_values() -> None:
    assert resolve_layout(Layout(0, 0), None) == Layout(0, 0)
    assert complete_layout(Layout(0, 0), default_partitions=2) == Layout(2, 64)
    assert complete_layout(Layout(0, 0), default_partitions=40) == Layout(40, 1280)
    assert complete_layout(Layout(0, 0), default_partitions=1) == Layout(2, 64)
    assert complete_layout(Layout(8, 0), default_partitions=2) == Layout(8, 256)
    assert complete_layout(Layout(3, 24), default_partitions=40) == Layout(3, 24)


def test_an_existing_checkpoint_keeps_its_layout_and_refuses_another() -> None:
    recorded = Layout(4, 128)
    assert resolve_layout(Layout(0, 0), recorded) == recorded
    assert resolve_layout(Layout(4, 0), recorded) == recorded
    assert resolve_layout(Layout(4, 128), recorded) == recorded
    with pytest.raises(CheckpointLayoutMismatch) as raised:
        resolve_layout(Layout(8, 0), recorded, "s3://b/streaming")
    message = str(raised.value)
    assert "\n" not in message
    assert "s3://b/streaming" in message and "4 state partitions" in message
    assert "PROPENSITY_STREAM_STATE_PARTITIONS=8" in message
    assert "PROPENSITY_STREAM_SESSION_BUCKETS" not in message  # only what differs is named
    with pytest.raises(CheckpointLayoutMismatch, match="PROPENSITY_STREAM_SESSION_BUCKETS=64"):
        resolve_layout(Layout(0, 64), recorded)


def _settings(directory: Path) -> Settings:
    return Settings().model_copy(update={"checkpoint_dir": str(directory)})


def test_the_layout_file_is_read_only_for_a_checkpoint_with_state(tmp_path: Path) -> None:
    checkpoint = Checkpoint(_settings(tmp_path / "cp"))
    assert checkpoint.recorded_layout() is None and checkpoint.query_tag() == ""
    checkpoint.record_layout(Layout(3, 24))
    # Spark has not started a query here yet: nothing is fixed, a later start may choose anew.
    assert checkpoint.recorded_layout() is None
    (tmp_path / "cp" / "metadata").write_text(
        json.dumps({"id": "0123abcd-4567-89ef-0000-000000000000"}) + "\n")
    assert checkpoint.recorded_layout() == Layout(3, 24)
    assert checkpoint.query_tag() == "0123abcd-"
    # State without a layout file: a checkpoint of the row-based operator's job, refused.
    (tmp_path / "cp" / LAYOUT_FILE).unlink()
    with pytest.raises(CheckpointFromEarlierJob, match="earlier version") as refused:
        checkpoint.recorded_layout()
    assert "\n" not in str(refused.value) and str(tmp_path / "cp") in str(refused.value)


def test_the_stream_command_refuses_another_layout_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from propensity.ops.cli import main

    directory = tmp_path / "cp"
    checkpoint = Checkpoint(_settings(directory))
    checkpoint.record_layout(Layout(3, 24))
    (directory / "metadata").write_text(json.dumps({"id": "0123abcd-4567"}) + "\n")
    monkeypatch.setenv("PROPENSITY_CHECKPOINT_DIR", str(directory))
    monkeypatch.setenv("PROPENSITY_STREAM_SESSION_BUCKETS", "48")
    assert main(["stream", "--until-idle"]) == 2  # before Kinesis or Spark is asked
    error = capsys.readouterr().err.strip()
    assert error.startswith("propensity: error: checkpoint ") and "\n" not in error
    assert "PROPENSITY_STREAM_SESSION_BUCKETS=48" in error
