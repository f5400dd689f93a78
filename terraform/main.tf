# The data plane: the clickstream and the buckets the code writes to. Compute lives in
# emr.tf (streaming job, daily batch) and scorer.tf; Redis in redis.tf; alarms in alarms.tf.

data "aws_caller_identity" "current" {}

locals {
  bucket_suffix = data.aws_caller_identity.current.account_id
  buckets = {
    lake        = "${var.name}-lake-${local.bucket_suffix}"
    quarantine  = "${var.name}-quarantine-${local.bucket_suffix}"
    features    = "${var.name}-features-${local.bucket_suffix}"
    checkpoints = "${var.name}-checkpoints-${local.bucket_suffix}"
    models      = "${var.name}-models-${local.bucket_suffix}"
    artifacts   = "${var.name}-artifacts-${local.bucket_suffix}"
    predictions = "${var.name}-predictions-${local.bucket_suffix}"
  }
  # Where each dataset the code keeps in day folders lives (the jobs' URIs in emr.tf and
  # scorer.tf are built from it), and how many days after its day it is kept (0: forever):
  # propensity/retention_days.json, the defaults the code reads too, then var.retention_days.
  # S3 expires by an object's age; a compacted or rewritten object starts its age again (see
  # the README's data lifecycle). The lake bucket's audit/ folder has no rule: kept.
  datasets = {
    lake        = { bucket = "lake", folder = "events" }
    archive     = { bucket = "features", folder = "features" }
    quarantine  = { bucket = "quarantine", folder = "quarantine" }
    predictions = { bucket = "predictions", folder = "log" }
  }
  retention_days = {
    for name, days in merge(jsondecode(file("${path.module}/../propensity/retention_days.json")), var.retention_days) :
    name => days if contains(keys(local.datasets), name)
  }
  dataset_uris = {
    for name, d in local.datasets : name => "s3://${aws_s3_bucket.data[d.bucket].bucket}/${d.folder}"
  }
}

resource "aws_kms_key" "data" {
  description         = "${var.name}: Kinesis, S3, Redis, secrets, logs and alarms encryption"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.data_key.json
}

# The account administers the key through IAM (each role's policy grants its own use); the
# services that encrypt on our behalf without a role of ours are named here.
data "aws_iam_policy_document" "data_key" {
  #checkov:skip=CKV_AWS_109:AWS's default key policy: the account root administers the key, IAM policies grant each role its use
  #checkov:skip=CKV_AWS_111:as above; in a key policy the resource "*" is this key only
  #checkov:skip=CKV_AWS_356:as above; in a key policy the resource "*" is this key only
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogsEncryptsTheScorerLog"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/${var.name}/*"]
    }
  }
  statement {
    sid       = "AlarmsAndEventRulesPublishToTheEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = local.alarm_publishers
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kinesis_stream" "events" {
  name             = "${var.name}-events"
  shard_count      = var.kinesis_shards > 0 ? var.kinesis_shards : null
  retention_period = var.kinesis_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.data.arn

  stream_mode_details {
    stream_mode = var.kinesis_shards > 0 ? "PROVISIONED" : "ON_DEMAND"
  }
}

resource "aws_s3_bucket" "data" {
  for_each = local.buckets
  bucket   = each.value
  #checkov:skip=CKV2_AWS_6:every bucket has its public access block (aws_s3_bucket_public_access_block.data, same for_each); checkov links the companion to one key only
  #checkov:skip=CKV_AWS_21:every bucket is versioned (aws_s3_bucket_versioning.data, same for_each)
  #checkov:skip=CKV_AWS_145:every bucket defaults to SSE-KMS (aws_s3_bucket_server_side_encryption_configuration.data, same for_each)
  #checkov:skip=CKV2_AWS_61:every bucket has a lifecycle rule (aws_s3_bucket_lifecycle_configuration.data, same for_each)
  #checkov:skip=CKV2_AWS_62:nothing consumes object events; the jobs list and read their own prefixes
  #checkov:skip=CKV_AWS_144:single-region deployment; versioning and KMS cover accidental deletion, a DR replica is the operator's choice
  #checkov:skip=CKV_AWS_18:CloudTrail S3 data events are the audit trail; server access logs would need a bucket of their own
}

resource "aws_s3_bucket_versioning" "data" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  for_each                = aws_s3_bucket.data
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.data
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id

  rule {
    id     = "transient"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Each dataset's retention, on its folder of this bucket.
  dynamic "rule" {
    for_each = {
      for name, d in local.datasets : name => d
      if d.bucket == each.key && local.retention_days[name] > 0
    }
    content {
      id     = "retention-${rule.key}"
      status = "Enabled"
      filter {
        prefix = "${rule.value.folder}/"
      }
      expiration {
        days = local.retention_days[rule.key]
      }
    }
  }
}

# Trust policies: which AWS service may assume each role.
locals {
  assuming_services = {
    emr       = "elasticmapreduce.amazonaws.com"
    ec2       = "ec2.amazonaws.com"
    ecs_tasks = "ecs-tasks.amazonaws.com"
    states    = "states.amazonaws.com"
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = local.assuming_services
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = [each.value]
    }
  }
}
