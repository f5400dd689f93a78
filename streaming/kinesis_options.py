"""What the Kinesis source (kinesis_source.py) is given and plans with: its options, the
rows it yields (RAW_SCHEMA), positions and offsets, and the stream identity a checkpoint must
match (CheckpointStreamMismatch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from propensity import events
from propensity.settings import Settings

FORMAT = "kinesis"
RAW_SCHEMA = pa.schema([
    ("shard_id", pa.string()),
    ("sequence_number", pa.string()),
    ("sub_sequence", pa.int32()),
    ("arrival_time", pa.timestamp("us", tz="UTC")),
    (events.PAYLOAD, pa.binary()),
    (events.REASON, pa.string()),  # why the record is not events (a broken aggregate), or null
    (events.DETAIL, pa.string()),
])
GET_RECORDS_LIMIT = 10_000
EXPIRED = "ExpiredIteratorException"
READS_FOLDER = "kinesis-reads"  # in the checkpoint: where each task records where it ended
PROBE_CALLS = 5  # GetRecords may answer empty before the records behind a gap
# What a task records beside its end position, for the driver's next planning only:
# "iterator" (a shard iterator pointing at the end) and "behind" (records follow the end).
HINTS = ("iterator", "behind")

# {"after": sequence} | {"start": "TRIM_HORIZON"} | {"start": "AT_TIMESTAMP", "ts": epoch s},
# plus "done": True once a closed shard has been read to its end; or a pending read
# {"read": id, "from": one of those, "limit": records (0: no limit), "cutoff": epoch s | None}.
Position = dict[str, Any]
# Offsets: {"shards": {shard id: Position}, "new_shards": Position, "stream": StreamIdentity}.
# {"arn": StreamARN, "created": StreamCreationTimestamp in epoch s (millisecond precision)}
StreamIdentity = dict[str, Any]


class CheckpointStreamMismatch(RuntimeError):
    """The checkpoint's offsets were written for another stream than the one the job reads."""

    def __init__(self, recorded: StreamIdentity, current: StreamIdentity) -> None:
        super().__init__(
            f"this checkpoint was written for stream {_describe(recorded)}, but the job reads "
            f"{_describe(current)}: start with a new checkpoint directory "
            f"(PROPENSITY_CHECKPOINT_DIR) or point the job at the original stream")
        self.recorded = recorded
        self.current = current

    @classmethod
    def message_in(cls, error: BaseException) -> str | None:
        """The message of a mismatch inside the error Spark raises for it (a
        StreamingQueryException holding the Python traceback as text), or None."""
        text = str(error)
        marker = f"{cls.__name__}: "
        at = text.rfind(marker)
        return None if at < 0 else text[at + len(marker):].splitlines()[0].strip()


def _describe(identity: StreamIdentity) -> str:
    created = datetime.fromtimestamp(identity["created"], UTC).isoformat(timespec="milliseconds")
    return f"{identity['arn']} created {created}"


def same_stream(a: StreamIdentity, b: StreamIdentity) -> bool:
    return a["arn"] == b["arn"] and abs(float(a["created"]) - float(b["created"])) < 0.0005


@dataclass(frozen=True)
class SourceOptions:
    stream: str
    region: str
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    starting_position: str = "TRIM_HORIZON"  # or LATEST
    max_records_per_batch: int = 0  # 0: all that is available
    until_idle: bool = False  # records arriving after the query started wait for a later run
    reads_dir: str = ""  # where tasks record their reads: the job's checkpoint directory

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SourceOptions:
        env = settings.to_env()
        return cls(
            stream=settings.kinesis_stream, region=settings.aws_region,
            endpoint_url=env.get("AWS_ENDPOINT_URL", ""),
            access_key_id=env.get("AWS_ACCESS_KEY_ID", ""),
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
            **{"reads_dir": settings.checkpoint_dir, **overrides})

    def as_options(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_options(cls, options: Any) -> SourceOptions:
        names = {f: options[f] for f in cls.__dataclass_fields__ if f in options}
        if "max_records_per_batch" in names:
            names["max_records_per_batch"] = int(names["max_records_per_batch"])
        if "until_idle" in names:
            names["until_idle"] = names["until_idle"] == "True"
        return cls(**names)

    def settings(self) -> Settings:
        values = {"AWS_DEFAULT_REGION": self.region, "PROPENSITY_KINESIS_STREAM": self.stream}
        if self.endpoint_url:
            values["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.access_key_id:
            values["AWS_ACCESS_KEY_ID"] = self.access_key_id
            values["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return Settings(**values)
