# Retraining (training/retrain.py): every 14 days, and whenever the champion's quality or drift
# alarm fires, a Step Functions state machine starts a transient cluster like the daily batch's
# whose one step runs `propensity retrain` over the lake's last `retrain_days` days. The new
# version becomes the challenger in canary (PROPENSITY_RETRAIN_CANARY_SHARE), never the
# champion: promotion is a person's call on the monitor's figures. One state machine, so the
# schedule and the alarms start the same thing and an execution's history shows each run.

resource "aws_iam_role" "retrain_nodes" {
  name               = "${var.name}-emr-retrain-nodes"
  assume_role_policy = data.aws_iam_policy_document.assume["ec2"].json
}

# The batch nodes' rights (the retrain runs the batch over its days first) and the model
# store's: a new version and the challenger in latest.json.
data "aws_iam_policy_document" "retrain_nodes" {
  source_policy_documents = [data.aws_iam_policy_document.batch_nodes.json]
  statement {
    sid       = "WriteModelStore"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.data["models"].arn, "${aws_s3_bucket.data["models"].arn}/*"]
  }
}

resource "aws_iam_role_policy" "retrain_nodes" {
  role   = aws_iam_role.retrain_nodes.id
  policy = data.aws_iam_policy_document.retrain_nodes.json
}

resource "aws_iam_instance_profile" "retrain_nodes" {
  name = "${var.name}-emr-retrain-nodes"
  role = aws_iam_role.retrain_nodes.name
}

resource "aws_cloudwatch_log_group" "retrain" {
  name              = "/aws/vendedlogs/states/${var.name}-retrain"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.data.arn
}

resource "aws_sfn_state_machine" "retrain" {
  name     = "${var.name}-retrain"
  role_arn = aws_iam_role.retrain_orchestrator.arn
  definition = jsonencode({
    Comment = "A transient EMR cluster that retrains on the lake's newest days and makes the result the challenger"
    StartAt = "Retrain"
    States = {
      Retrain = {
        Type     = "Task"
        Resource = "arn:aws:states:::elasticmapreduce:createCluster.sync"
        Parameters = merge(local.transient_cluster, {
          Name             = "${var.name}-retrain"
          JobFlowRole      = aws_iam_instance_profile.retrain_nodes.arn
          BootstrapActions = [local.bootstrap]
          Steps = [{
            Name            = "propensity retrain (last ${var.retrain_days} days)"
            ActionOnFailure = "TERMINATE_CLUSTER"
            HadoopJarStep = {
              Jar  = "command-runner.jar"
              Args = ["bash", "/usr/local/propensity/run-step.sh", "retrain", tostring(var.retrain_days)]
            }
          }]
        })
        End = true
      }
    }
  })
  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.retrain.arn}:*"
    include_execution_data = true
    level                  = "ALL"
  }
  tracing_configuration {
    enabled = true
  }
}

# The state machine: create the cluster, follow it to its end (.sync), pass its roles.
data "aws_iam_policy_document" "retrain_orchestrator" {
  #checkov:skip=CKV_AWS_111:only the log delivery and X-Ray actions have "*": they take no resource-level permissions
  #checkov:skip=CKV_AWS_356:as above; the cluster actions name the account's clusters
  statement {
    sid       = "RunRetrainCluster"
    actions   = ["elasticmapreduce:RunJobFlow"]
    resources = ["*"] # the cluster does not exist before RunJobFlow: no ARN to name
  }
  statement {
    sid       = "FollowRetrainCluster"
    actions   = ["elasticmapreduce:DescribeCluster", "elasticmapreduce:TerminateJobFlows"]
    resources = ["arn:aws:elasticmapreduce:${var.region}:${data.aws_caller_identity.current.account_id}:cluster/*"]
  }
  statement {
    sid       = "PassClusterRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.emr_service.arn, aws_iam_role.retrain_nodes.arn]
  }
  statement {
    sid       = "ClusterEvents"
    actions   = ["events:PutTargets", "events:PutRule", "events:DescribeRule"]
    resources = ["arn:aws:events:${var.region}:${data.aws_caller_identity.current.account_id}:rule/StepFunctionsGetEventForEMRRunJobFlowRule"]
  }
  statement {
    sid       = "DeliverLogsAndTraces"
    actions   = ["logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups", "xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # log delivery and X-Ray take no resource-level permissions
  }
}

resource "aws_iam_role" "retrain_orchestrator" {
  name               = "${var.name}-retrain-orchestrator"
  assume_role_policy = data.aws_iam_policy_document.assume["states"].json
}

resource "aws_iam_role_policy" "retrain_orchestrator" {
  role   = aws_iam_role.retrain_orchestrator.id
  policy = data.aws_iam_policy_document.retrain_orchestrator.json
}

# Who may start a retrain: the schedule and the alarm rule.
data "aws_iam_policy_document" "retrain_trigger_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com", "events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

data "aws_iam_policy_document" "retrain_trigger" {
  statement {
    sid       = "StartRetrain"
    actions   = ["states:StartExecution"]
    resources = [aws_sfn_state_machine.retrain.arn]
  }
}

resource "aws_iam_role" "retrain_trigger" {
  name               = "${var.name}-retrain-trigger"
  assume_role_policy = data.aws_iam_policy_document.retrain_trigger_assume.json
}

resource "aws_iam_role_policy" "retrain_trigger" {
  role   = aws_iam_role.retrain_trigger.id
  policy = data.aws_iam_policy_document.retrain_trigger.json
}

resource "aws_scheduler_schedule" "retrain" {
  name                         = "${var.name}-retrain"
  schedule_expression          = var.retrain_schedule
  schedule_expression_timezone = "UTC"
  kms_key_arn                  = aws_kms_key.data.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_sfn_state_machine.retrain.arn
    role_arn = aws_iam_role.retrain_trigger.arn
  }
}

# The champion's quality or drift alarm going into ALARM starts a retrain too.
resource "aws_cloudwatch_event_rule" "retrain_on_alarm" {
  name        = "${var.name}-retrain-on-alarm"
  description = "Retrain when the champion's live quality or drift alarm fires"
  event_pattern = jsonencode({
    source        = ["aws.cloudwatch"]
    "detail-type" = ["CloudWatch Alarm State Change"]
    resources = concat([aws_cloudwatch_metric_alarm.live_auc.arn],
    [for alarm in aws_cloudwatch_metric_alarm.drift : alarm.arn])
    detail = { state = { value = ["ALARM"] } }
  })
}

resource "aws_cloudwatch_event_target" "retrain_on_alarm" {
  rule     = aws_cloudwatch_event_rule.retrain_on_alarm.name
  arn      = aws_sfn_state_machine.retrain.arn
  role_arn = aws_iam_role.retrain_trigger.arn
}
