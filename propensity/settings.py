"""Every setting the system reads, in one place.

Each field is read from the environment variable named by its alias. The same names appear in
`propensity stack up`'s exports, docker-compose.yml, the Terraform outputs and the README, and
tests check that they agree with this module. On AWS the credentials stay unset so that boto3
uses the instance or task role.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Days each dataset keeps (0: forever), shared with terraform's S3 lifecycle rules.
RETENTION_DAYS: dict[str, int] = {
    name: days for name, days in json.loads(
        (Path(__file__).with_name("retention_days.json")).read_text()).items()
    if not name.startswith("_")}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # AWS, by the names boto3 itself reads, so every AWS client (ours, Feast's) agrees.
    aws_endpoint_url: str | None = Field(None, alias="AWS_ENDPOINT_URL")
    aws_region: str = Field("us-east-1", alias="AWS_DEFAULT_REGION")
    aws_access_key_id: SecretStr | None = Field(None, alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, alias="AWS_SECRET_ACCESS_KEY")

    kinesis_stream: str = Field("propensity-events", alias="PROPENSITY_KINESIS_STREAM")
    kinesis_shards: int = Field(2, ge=1, alias="PROPENSITY_KINESIS_SHARDS")

    # Feast's Redis connection string: "host:port[,ssl=true][,password=...]".
    redis: str = Field("127.0.0.1:6379", alias="PROPENSITY_REDIS")

    events_uri: str = Field("s3://propensity-lake/events", alias="PROPENSITY_EVENTS_URI")
    quarantine_uri: str = Field(
        "s3://propensity-lake/quarantine", alias="PROPENSITY_QUARANTINE_URI"
    )
    features_uri: str = Field("s3://propensity-features/features", alias="PROPENSITY_FEATURES_URI")
    models_uri: str = Field("s3://propensity-models/models", alias="PROPENSITY_MODELS_URI")
    # The scorer's prediction log (serving/prediction_log.py): every answer, Parquet by date.
    predictions_uri: str = Field("s3://propensity-predictions/log",
                                 alias="PROPENSITY_PREDICTIONS_URI")
    # The monitor's daily figures (monitoring/): live quality per model version and variant.
    monitoring_uri: str = Field("s3://propensity-predictions/monitoring",
                                alias="PROPENSITY_MONITORING_URI")

    # Feast's registry: a local file here, s3://... when several hosts share it.
    feast_registry: str = Field(".propensity/feast/registry.db", alias="PROPENSITY_FEAST_REGISTRY")
    # Feature semantics shared by streaming, training and serving (see propensity.features).
    session_timeout_s: int = Field(1800, ge=60, alias="PROPENSITY_SESSION_TIMEOUT_S")
    # How late (event time) an event may arrive before the streaming job quarantines it.
    watermark_delay_s: int = Field(600, ge=0, alias="PROPENSITY_WATERMARK_DELAY_S")
    # How long session features live in Redis after their last update (streaming job).
    online_ttl_s: int = Field(7200, ge=60, alias="PROPENSITY_ONLINE_TTL_S")
    # How long user and product features live in Redis: every daily batch rewrites them all,
    # so they outlive a missed run or two. Also the TTL of `feast materialize`.
    batch_online_ttl_s: int = Field(3 * 86400, ge=3600, alias="PROPENSITY_BATCH_ONLINE_TTL_S")
    # How long the streaming job retries a micro-batch's Redis writes while Redis is away
    # (restart, failover) before it fails the batch (and EMR's step wrapper restarts the job).
    stream_online_retry_s: float = Field(300, ge=0, alias="PROPENSITY_STREAM_ONLINE_RETRY_S")
    # Spark checkpoints of the streaming job: a local folder here, s3://... on EMR.
    checkpoint_dir: str = Field(".propensity/checkpoints", alias="PROPENSITY_CHECKPOINT_DIR")
    # The streaming job's parallelism, recorded with its checkpoint when the checkpoint is
    # created and kept for its life (streaming/checkpoint.py): the stateful step's partitions
    # (tasks per micro-batch; 0: the cores Spark has then, e.g. 2 in local[2]; a cluster's
    # deployment sets its executors' cores) and the session buckets the sessions are grouped
    # in (0: 32 per partition). 0 on an existing checkpoint takes the checkpoint's values.
    stream_state_partitions: int = Field(0, ge=0, alias="PROPENSITY_STREAM_STATE_PARTITIONS")
    stream_session_buckets: int = Field(0, ge=0, alias="PROPENSITY_STREAM_SESSION_BUCKETS")

    # The scorer: deadline of the online-store read (then it answers degraded), how often it
    # looks for a new `latest` model, the largest request body, an optional API key (header
    # X-API-Key), and whether it reads through Feast's get_online_features_async instead of
    # its own pipelined read.
    serving_deadline_ms: float = Field(20, gt=0, alias="PROPENSITY_SERVING_DEADLINE_MS")
    model_poll_s: float = Field(30, gt=0, alias="PROPENSITY_MODEL_POLL_S")
    serving_max_body_bytes: int = Field(65536, ge=1024, alias="PROPENSITY_SERVING_MAX_BODY_BYTES")
    serving_api_key: SecretStr | None = Field(None, alias="PROPENSITY_SERVING_API_KEY")
    serving_feast_async: bool = Field(False, alias="PROPENSITY_SERVING_FEAST_ASYNC")
    # Scoring requests in progress at once before the scorer sheds load with 429: a limit
    # that follows the measured latency and the event loop's lag (serving/limit.py), starting
    # at the initial value, never above the maximum. A fixed limit holds latency only on the
    # CPU it was chosen on (every request waits for the one event loop): 32 kept 10 ms on a
    # quiet machine and let p99 reach 180-210 ms when the CPU ran at half speed (2026-12-02).
    # 16 to start: what the fixed limit last was; 64 at most: a quiet machine answered its
    # capacity near 16 in progress, four times that is room for slow Redis reads.
    serving_initial_in_progress: int = Field(16, ge=1,
                                             alias="PROPENSITY_SERVING_INITIAL_IN_PROGRESS")
    serving_max_in_progress: int = Field(64, ge=1, alias="PROPENSITY_SERVING_MAX_IN_PROGRESS")
    # The prediction log: on or off; answers queued at most (past it they are dropped and
    # counted: the log never holds a request up); written every flush_s, or at once when a
    # batch's rows wait. 100,000 answers (about 65 MB, measured) are 50 s at 2,000 answers/s.
    prediction_log: bool = Field(True, alias="PROPENSITY_PREDICTION_LOG")
    prediction_log_queue: int = Field(100_000, ge=1, alias="PROPENSITY_PREDICTION_LOG_QUEUE")
    prediction_log_batch_rows: int = Field(20_000, ge=1,
                                           alias="PROPENSITY_PREDICTION_LOG_BATCH_ROWS")
    prediction_log_flush_s: float = Field(10, gt=0, alias="PROPENSITY_PREDICTION_LOG_FLUSH_S")

    # Compaction (propensity/compaction.py): a closed day's small objects are rewritten into
    # files of about this size (S3 and Parquet readers work best from about 128 MB).
    compaction_target_mb: int = Field(128, ge=1, alias="PROPENSITY_COMPACTION_TARGET_MB")
    # Retention (propensity/retention.py): days a dataset keeps a day's objects, counted from
    # the end of the day; 0 keeps them forever. On AWS the S3 lifecycle rules expire them
    # (terraform reads the same defaults); `propensity retention` applies them anywhere.
    lake_retention_days: int = Field(RETENTION_DAYS["lake"], ge=0,
                                     alias="PROPENSITY_LAKE_RETENTION_DAYS")
    archive_retention_days: int = Field(RETENTION_DAYS["archive"], ge=0,
                                        alias="PROPENSITY_ARCHIVE_RETENTION_DAYS")
    quarantine_retention_days: int = Field(RETENTION_DAYS["quarantine"], ge=0,
                                           alias="PROPENSITY_QUARANTINE_RETENTION_DAYS")
    predictions_retention_days: int = Field(RETENTION_DAYS["predictions"], ge=0,
                                            alias="PROPENSITY_PREDICTIONS_RETENTION_DAYS")

    # The share of the shoppers a retrained model answers for as the challenger (canary).
    retrain_canary_share: float = Field(0.05, gt=0, lt=1,
                                        alias="PROPENSITY_RETRAIN_CANARY_SHARE")

    # CloudWatch namespace of the streaming job's per-batch metrics; unset: none published.
    metrics_namespace: str | None = Field(None, alias="PROPENSITY_METRICS_NAMESPACE")

    # Spark master for the jobs: "local[2]" embedded; empty keeps spark-submit's (EMR).
    spark_master: str = Field("local[2]", alias="PROPENSITY_SPARK_MASTER")

    # Where the embedded local stack keeps its pids, logs and Spark checkpoints.
    home: Path = Field(Path(".propensity"), alias="PROPENSITY_HOME")

    def s3_uris(self) -> list[str]:
        return [self.events_uri, self.quarantine_uri, self.features_uri, self.models_uri,
                self.predictions_uri, self.monitoring_uri]

    def buckets(self) -> list[str]:
        """The S3 buckets the system writes to, each once, in a stable order."""
        return list(dict.fromkeys(s3_bucket(uri) for uri in self.s3_uris()))

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (unset optional values left out)."""
        env: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[field.alias or name.upper()] = str(value)
        return env

    @classmethod
    def env_names(cls) -> set[str]:
        return {field.alias or name.upper() for name, field in cls.model_fields.items()}


def s3_bucket(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc
