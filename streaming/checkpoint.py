"""What the streaming job keeps beside Spark's own files in its checkpoint directory.

- Spark's `metadata` holds the query's id, which Spark keeps for the life of the checkpoint:
  the sink's object names carry its first 8 hex digits (`query_tag`), so a job started afresh
  on a new checkpoint (batch ids from 0 again) never overwrites the old one's objects.
- `propensity-layout.json` records the job's parallelism when the checkpoint is created: the
  stateful step's partition count and the number of session buckets. Both are fixed for the
  life of the checkpoint: Spark keeps a streaming query's state partitions whatever the
  session asks later, and a session is looked up in bucket crc32(id) % buckets, so another
  count would look sessions up in buckets that do not hold them. A setting that asks for other
  values than the checkpoint's is a one-line error (`CheckpointLayoutMismatch`), not wrong
  state; a setting left at 0 (auto) takes the checkpoint's. A checkpoint with state but no
  layout file was made by a job from before the layout was recorded, whose stateful operator
  (row-based transformWithState) kept its state in another form: refused in one line too
  (`CheckpointFromEarlierJob`).

The directory is a local folder or s3://bucket/prefix (EMR).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from propensity import aws
from propensity.settings import Settings

LAYOUT_FILE = "propensity-layout.json"
SPARK_METADATA = "metadata"
# Session buckets per state partition when the bucket count is left to the job: the buckets
# of a partition are Spark's hash of the bucket number, so the partitions' shares of the
# sessions differ by about 1/sqrt(buckets per partition) (18% at 32), while every bucket that
# has events in a micro-batch costs one call of the stateful processor (0.1-0.3 ms).
BUCKETS_PER_PARTITION = 32


@dataclass(frozen=True)
class Layout:
    state_partitions: int
    session_buckets: int


class CheckpointRefused(RuntimeError):
    """The job cannot go on from this checkpoint; the message says why and what to do."""


class CheckpointFromEarlierJob(CheckpointRefused):
    """The checkpoint was written by a job whose state this one cannot read."""

    def __init__(self, directory: str) -> None:
        super().__init__(
            f"checkpoint {directory} was written by an earlier version of the streaming job, "
            f"whose stateful operator kept its state in another form: start a new checkpoint "
            f"(PROPENSITY_CHECKPOINT_DIR; move this one aside) and replay from the stream's "
            f"start or the lake if the sessions in flight matter")


class CheckpointLayoutMismatch(CheckpointRefused):
    """The settings ask for another parallelism than the checkpoint was created with."""

    def __init__(self, directory: str, recorded: Layout, requested: Layout) -> None:
        asked = ", ".join(f"{_SETTING[name]}={value}" for name, value in asdict(requested).items()
                          if value and value != getattr(recorded, name))
        super().__init__(
            f"checkpoint {directory} was created with {recorded.state_partitions} state "
            f"partitions and {recorded.session_buckets} session buckets, which it keeps for "
            f"its life, but {asked} asks for other values: unset them (0 takes the "
            f"checkpoint's) or start a new checkpoint (PROPENSITY_CHECKPOINT_DIR)")


_SETTING = {"state_partitions": "PROPENSITY_STREAM_STATE_PARTITIONS",
            "session_buckets": "PROPENSITY_STREAM_SESSION_BUCKETS"}


def requested_layout(settings: Settings) -> Layout:
    """The layout the settings ask for; 0 in a field: the job chooses (auto)."""
    return Layout(settings.stream_state_partitions, settings.stream_session_buckets)


def resolve_layout(requested: Layout, recorded: Layout | None, directory: str = "") -> Layout:
    """The checkpoint's layout when it has one (a requested value that differs is an error),
    else the requested one, whose zeros the caller fills for a new checkpoint."""
    if recorded is None:
        return requested
    for name, value in asdict(requested).items():
        if value and value != getattr(recorded, name):
            raise CheckpointLayoutMismatch(directory, recorded, requested)
    return recorded


def complete_layout(requested: Layout, default_partitions: int) -> Layout:
    """Auto values for a new checkpoint: as many state partitions as Spark has cores for tasks
    (at least 2), BUCKETS_PER_PARTITION buckets per partition."""
    partitions = requested.state_partitions or max(2, default_partitions)
    buckets = requested.session_buckets or BUCKETS_PER_PARTITION * partitions
    return Layout(partitions, buckets)


def layout_from_json(text: str | bytes) -> Layout:
    values = json.loads(text)
    return Layout(int(values["state_partitions"]), int(values["session_buckets"]))


def layout_to_json(layout: Layout) -> str:
    return json.dumps(asdict(layout), sort_keys=True) + "\n"


class Checkpoint:
    """The job's files in one checkpoint directory (reads and writes; no Spark)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.checkpoint_dir.rstrip("/")
        self._fs: Any = None

    @property
    def on_s3(self) -> bool:
        return self.directory.startswith("s3://")

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = aws.s3_filesystem(self.settings)
        return self._fs

    def read(self, name: str) -> bytes | None:
        """A file of the checkpoint, or None when it is not there (any other failure, such as
        S3 out of reach, propagates)."""
        try:
            if self.on_s3:
                with self.fs.open_input_stream(f"{aws.s3_key(self.directory)}/{name}") as stream:
                    return stream.read()
            return Path(self.directory, name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        if self.on_s3:
            with self.fs.open_output_stream(f"{aws.s3_key(self.directory)}/{name}") as stream:
                stream.write(text.encode())
        else:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
            Path(self.directory, name).write_text(text)

    def delete(self, name: str) -> None:
        """Remove a file of the checkpoint; one already gone is fine."""
        if self.on_s3:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f"{aws.s3_key(self.directory)}/{name}")
        else:
            Path(self.directory, name).unlink(missing_ok=True)

    def query_tag(self) -> str:
        """`<first 8 hex digits of the query id>-` from Spark's metadata (written before the
        first batch), or "" when the checkpoint has none."""
        text = self.read(SPARK_METADATA)
        if text is None:
            return ""
        return json.loads(text.splitlines()[0])["id"].replace("-", "")[:8] + "-"

    def recorded_layout(self) -> Layout | None:
        """The layout the checkpoint keeps (its layout file), or None for a checkpoint without
        state yet (Spark has not written its metadata: nothing is fixed). Raises
        CheckpointFromEarlierJob for state without a layout file."""
        if self.read(SPARK_METADATA) is None:
            return None
        text = self.read(LAYOUT_FILE)
        if text is None:
            raise CheckpointFromEarlierJob(self.directory)
        return layout_from_json(text)

    def record_layout(self, layout: Layout) -> None:
        self.write(LAYOUT_FILE, layout_to_json(layout))
