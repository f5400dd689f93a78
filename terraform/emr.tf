# Spark on EMR: a persistent cluster running the streaming job as a step, and the daily batch
# on a transient cluster that EventBridge Scheduler starts every night.
#
# Why a transient cluster, not EMR Serverless: both jobs then share one bootstrap (Python
# 3.11 and the project's wheel with its pinned dependencies, from the artifacts bucket) and
# one step wrapper, and the batch runs on the same EMR release as the streaming job. EMR
# Serverless would need the whole virtualenv packed for its own image; the saving (no idle
# nodes) is small for a job that runs minutes a day on a cluster that ends with its step.

locals {
  # The EMR runtime, defined once in deploy/emr/runtime.json: its release label here, its
  # pyspark version for the tests that run a second time on it (make test). Not a variable:
  # the jobs are tested on exactly this release's Spark.
  emr_runtime = jsondecode(file("${path.module}/../deploy/emr/runtime.json"))
  artifacts   = "s3://${aws_s3_bucket.data["artifacts"].bucket}/propensity/${var.package_version}"
  # Bootstrap: installs the wheel and writes the settings (Redis from Secrets Manager).
  bootstrap = {
    Name = "install propensity ${var.package_version}"
    ScriptBootstrapAction = {
      Path = "${local.artifacts}/bootstrap.sh"
      Args = [local.artifacts, aws_secretsmanager_secret.redis.arn, var.region]
    }
  }
  node_settings = {
    AWS_DEFAULT_REGION        = var.region
    PROPENSITY_KINESIS_STREAM = aws_kinesis_stream.events.name
    PROPENSITY_EVENTS_URI     = local.dataset_uris.lake
    PROPENSITY_QUARANTINE_URI = local.dataset_uris.quarantine
    PROPENSITY_FEATURES_URI   = local.dataset_uris.archive
    PROPENSITY_MODELS_URI     = "s3://${aws_s3_bucket.data["models"].bucket}/models"
    PROPENSITY_FEAST_REGISTRY = "s3://${aws_s3_bucket.data["features"].bucket}/feast/registry.db"
    PROPENSITY_CHECKPOINT_DIR = "s3://${aws_s3_bucket.data["checkpoints"].bucket}/streaming"
    PROPENSITY_SPARK_MASTER   = ""
    # The daily monitor reads the scorer's log and writes its figures beside it; both jobs
    # publish their CloudWatch metrics to the namespace the alarms read.
    PROPENSITY_PREDICTIONS_URI   = local.dataset_uris.predictions
    PROPENSITY_MONITORING_URI    = "s3://${aws_s3_bucket.data["predictions"].bucket}/monitoring"
    PROPENSITY_METRICS_NAMESPACE = local.metrics_namespace
    # The retention the S3 lifecycle applies (main.tf), for `propensity retention` and reports.
    PROPENSITY_LAKE_RETENTION_DAYS        = tostring(local.retention_days.lake)
    PROPENSITY_ARCHIVE_RETENTION_DAYS     = tostring(local.retention_days.archive)
    PROPENSITY_QUARANTINE_RETENTION_DAYS  = tostring(local.retention_days.quarantine)
    PROPENSITY_PREDICTIONS_RETENTION_DAYS = tostring(local.retention_days.predictions)
    # The streaming cluster's cores unless set: each state partition is one task per batch.
    PROPENSITY_STREAM_STATE_PARTITIONS = tostring(var.stream_state_partitions > 0 ? var.stream_state_partitions : var.emr_core_count * data.aws_ec2_instance_type.emr.default_vcpus)
  }
  emr_configurations = [{
    Classification = "spark-env"
    Configurations = [{
      Classification = "export"
      Properties     = merge(local.node_settings, { PYSPARK_PYTHON = "/usr/bin/python3.11" })
    }]
  }]
}

# The vCPUs of the EMR nodes' instance type: the streaming job's default state partitions.
data "aws_ec2_instance_type" "emr" {
  instance_type = var.emr_instance_type
}

resource "aws_iam_role" "emr_service" {
  name               = "${var.name}-emr-service"
  assume_role_policy = data.aws_iam_policy_document.assume["emr"].json
}

resource "aws_iam_role_policy_attachment" "emr_service" {
  role       = aws_iam_role.emr_service.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"
}

# What every EMR node needs: the artifacts (bootstrap), its logs, the Redis secret, the key.
data "aws_iam_policy_document" "emr_nodes" {
  statement {
    sid       = "ReadArtifacts"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.data["artifacts"].arn, "${aws_s3_bucket.data["artifacts"].arn}/*"]
  }
  statement {
    sid       = "WriteEmrLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data["artifacts"].arn}/emr-logs/*"]
  }
  statement {
    sid       = "ReadRedisSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.redis.arn]
  }
  statement {
    sid       = "UseDataKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

# The jobs' own CloudWatch metrics (the streaming job's batches, the monitor's day).
data "aws_iam_policy_document" "put_metrics" {
  statement {
    sid       = "PutMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource type; the condition pins the namespace
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [local.metrics_namespace]
    }
  }
}

# The streaming nodes: read Kinesis, write the lake, quarantine, feature archive and
# checkpoints. No access to the model store.
data "aws_iam_policy_document" "streaming_nodes" {
  source_policy_documents = [data.aws_iam_policy_document.emr_nodes.json, data.aws_iam_policy_document.put_metrics.json]
  statement {
    sid       = "ReadClickstream"
    actions   = ["kinesis:DescribeStream", "kinesis:DescribeStreamSummary", "kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
    resources = [aws_kinesis_stream.events.arn]
  }
  statement {
    sid     = "WriteLakeFeaturesCheckpoints"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:AbortMultipartUpload"]
    resources = flatten([for key in ["lake", "quarantine", "features", "checkpoints"] : [
      aws_s3_bucket.data[key].arn, "${aws_s3_bucket.data[key].arn}/*"
    ]])
  }
}

# The batch nodes: read the lake, write the feature archive (and the Feast registry in it),
# compact each dataset's day before (rewrite and remove objects in its folder: main.tf's
# datasets); the monitor step: read the prediction log and the model store's specs, write its
# figures, publish its metrics. No Kinesis, no writes to the model store.
data "aws_iam_policy_document" "batch_nodes" {
  source_policy_documents = [data.aws_iam_policy_document.emr_nodes.json, data.aws_iam_policy_document.put_metrics.json]
  statement {
    sid     = "ReadLakeLogModels"
    actions = ["s3:GetObject", "s3:ListBucket"]
    resources = flatten([for key in ["lake", "quarantine", "predictions", "models"] : [
      aws_s3_bucket.data[key].arn, "${aws_s3_bucket.data[key].arn}/*"
    ]])
  }
  statement {
    sid       = "CompactDatasets"
    actions   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = [for name, d in local.datasets : "${aws_s3_bucket.data[d.bucket].arn}/${d.folder}/*"]
  }
  statement {
    sid       = "WriteFeatures"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:AbortMultipartUpload"]
    resources = [aws_s3_bucket.data["features"].arn, "${aws_s3_bucket.data["features"].arn}/*"]
  }
  statement {
    sid       = "WriteMonitoring"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data["predictions"].arn}/monitoring/*"]
  }
}

resource "aws_iam_role" "streaming_nodes" {
  name               = "${var.name}-emr-streaming-nodes"
  assume_role_policy = data.aws_iam_policy_document.assume["ec2"].json
}

resource "aws_iam_role_policy" "streaming_nodes" {
  role   = aws_iam_role.streaming_nodes.id
  policy = data.aws_iam_policy_document.streaming_nodes.json
}

resource "aws_iam_instance_profile" "streaming_nodes" {
  name = "${var.name}-emr-streaming-nodes"
  role = aws_iam_role.streaming_nodes.name
}

resource "aws_iam_role" "batch_nodes" {
  name               = "${var.name}-emr-batch-nodes"
  assume_role_policy = data.aws_iam_policy_document.assume["ec2"].json
}

resource "aws_iam_role_policy" "batch_nodes" {
  role   = aws_iam_role.batch_nodes.id
  policy = data.aws_iam_policy_document.batch_nodes.json
}

resource "aws_iam_instance_profile" "batch_nodes" {
  name = "${var.name}-emr-batch-nodes"
  role = aws_iam_role.batch_nodes.name
}

resource "aws_emr_security_configuration" "encrypted" {
  name = "${var.name}-encrypted"
  configuration = jsonencode({
    EncryptionConfiguration = {
      EnableAtRestEncryption    = true
      EnableInTransitEncryption = false # node-to-node TLS needs a certificate bundle; data leaves the nodes over TLS (S3, Kinesis, Redis)
      AtRestEncryptionConfiguration = {
        S3EncryptionConfiguration = {
          EncryptionMode = "SSE-KMS"
          AwsKmsKey      = aws_kms_key.data.arn
        }
        LocalDiskEncryptionConfiguration = {
          EncryptionKeyProviderType = "AwsKms"
          AwsKmsKey                 = aws_kms_key.data.arn
          EnableEbsEncryption       = true
        }
      }
    }
  })
}

resource "aws_emr_cluster" "streaming" {
  name                              = "${var.name}-streaming"
  release_label                     = local.emr_runtime.release_label
  applications                      = ["Spark"]
  service_role                      = aws_iam_role.emr_service.arn
  security_configuration            = aws_emr_security_configuration.encrypted.name
  log_uri                           = "s3://${aws_s3_bucket.data["artifacts"].bucket}/emr-logs/"
  keep_job_flow_alive_when_no_steps = true
  termination_protection            = true
  configurations_json               = jsonencode(local.emr_configurations)

  ec2_attributes {
    subnet_id                         = var.private_subnet_ids[0]
    instance_profile                  = aws_iam_instance_profile.streaming_nodes.arn
    additional_master_security_groups = aws_security_group.emr.id
    additional_slave_security_groups  = aws_security_group.emr.id
  }

  master_instance_group {
    instance_type = var.emr_instance_type
  }

  core_instance_group {
    instance_type  = var.emr_instance_type
    instance_count = var.emr_core_count
  }

  bootstrap_action {
    name = local.bootstrap.Name
    path = local.bootstrap.ScriptBootstrapAction.Path
    args = local.bootstrap.ScriptBootstrapAction.Args
  }

  # The streaming job, restarted from its checkpoint by the wrapper if it stops.
  step {
    name              = "propensity stream"
    action_on_failure = "CONTINUE"
    hadoop_jar_step {
      jar  = "command-runner.jar"
      args = ["bash", "/usr/local/propensity/run-step.sh", "stream"]
    }
  }

  lifecycle {
    ignore_changes = [step] # steps added later (replays, recoveries) are not drift
  }
}

# The daily batch: a transient cluster (ends with its step) created by EventBridge Scheduler
# through the EMR RunJobFlow API, for the day that just ended.
data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "StartBatchCluster"
    actions   = ["elasticmapreduce:RunJobFlow"]
    resources = ["*"] # RunJobFlow creates a cluster: there is no resource to name before
  }
  statement {
    sid       = "PassClusterRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.emr_service.arn, aws_iam_role.batch_nodes.arn]
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-batch-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

resource "aws_iam_role_policy" "scheduler" {
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

# A transient cluster that ends with its steps: the daily batch's and retraining's (retrain.tf).
locals {
  transient_cluster = {
    ReleaseLabel          = local.emr_runtime.release_label
    Applications          = [{ Name = "Spark" }]
    ServiceRole           = aws_iam_role.emr_service.arn
    SecurityConfiguration = aws_emr_security_configuration.encrypted.name
    LogUri                = "s3://${aws_s3_bucket.data["artifacts"].bucket}/emr-logs/"
    Configurations        = local.emr_configurations
    Instances = {
      Ec2SubnetId                    = var.private_subnet_ids[0]
      AdditionalMasterSecurityGroups = [aws_security_group.emr.id]
      AdditionalSlaveSecurityGroups  = [aws_security_group.emr.id]
      KeepJobFlowAliveWhenNoSteps    = false
      InstanceGroups = [
        { InstanceRole = "MASTER", InstanceType = var.emr_instance_type, InstanceCount = 1 },
        { InstanceRole = "CORE", InstanceType = var.emr_instance_type, InstanceCount = var.batch_core_count },
      ]
    }
  }
}

resource "aws_scheduler_schedule" "daily_batch" {
  name                         = "${var.name}-daily-batch"
  schedule_expression          = var.batch_schedule
  schedule_expression_timezone = "UTC"
  kms_key_arn                  = aws_kms_key.data.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = "arn:aws:scheduler:::aws-sdk:emr:runJobFlow"
    role_arn = aws_iam_role.scheduler.arn
    input = jsonencode(merge(local.transient_cluster, {
      Name             = "${var.name}-daily-batch"
      JobFlowRole      = aws_iam_instance_profile.batch_nodes.arn
      BootstrapActions = [local.bootstrap]
      Steps = [{
        Name            = "propensity batch (yesterday)"
        ActionOnFailure = "TERMINATE_CLUSTER"
        HadoopJarStep = {
          Jar  = "command-runner.jar"
          Args = ["bash", "/usr/local/propensity/run-step.sh", "batch"]
        }
        }, {
        Name            = "propensity monitor (yesterday's predictions)"
        ActionOnFailure = "TERMINATE_CLUSTER"
        HadoopJarStep = {
          Jar  = "command-runner.jar"
          Args = ["bash", "/usr/local/propensity/run-step.sh", "monitor"]
        }
      }]
    }))
    retry_policy {
      maximum_retry_attempts = 3
    }
  }
}
