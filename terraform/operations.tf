# What pages a person beyond alarms.tf: the scorer's own metrics (its EMF log lines,
# serving/emf.py; names in propensity/cloudwatch.py), the daily batch and the retraining
# reporting their outcome, and the streaming step leaving RUNNING. Every alarm's description
# says what to do; the README's runbook says more.

locals {
  # Who publishes to the alarm topic: CloudWatch's alarms and EventBridge's rules (the topic's
  # policy here, the key's in main.tf).
  alarm_publishers  = ["cloudwatch.amazonaws.com", "events.amazonaws.com"]
  scorer_dimensions = { Service = "scorer" } # propensity/cloudwatch.py: SCORER_DIMENSIONS
  # Share alarms: a metric's share of another, in %, over 5 minutes of 1-minute sums.
  scorer_share_alarms = {
    degraded = {
      part        = "DegradedAnswers"
      whole       = "Answers"
      description = "More than 1% of answers were computed without the online store's features for 5 minutes (Redis slow or unreachable): check ElastiCache (CPU, connections, failover events) and the scorer's propensity_degraded_total by reason; answers stay valid but blind to the session"
    }
    shed = {
      part        = "ShedRequests"
      whole       = "ScoringRequests"
      description = "More than 1% of scoring requests got 429 for 5 minutes (more in progress than the scorer's adaptive limit): check the tasks' CPU and count (autoscaling at its maximum?) and the event-loop lag; raise scorer_max_tasks or the tasks' CPU"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "scorer_share" {
  for_each            = local.scorer_share_alarms
  alarm_name          = "${var.name}-scorer-${each.key}-above-1pct"
  alarm_description   = each.value.description
  evaluation_periods  = 5
  threshold           = 1
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "share"
    expression  = "100 * part / MAX([whole, 1])"
    label       = "${each.value.part} / ${each.value.whole} (%)"
    return_data = true
  }
  dynamic "metric_query" {
    for_each = { part = each.value.part, whole = each.value.whole }
    content {
      id = metric_query.key
      metric {
        namespace   = local.metrics_namespace
        metric_name = metric_query.value
        dimensions  = local.scorer_dimensions
        period      = 60
        stat        = "Sum"
      }
    }
  }
}

# Single-metric alarms: no scoring request at all for 10 minutes while the shop is open (the
# shop's backend stopped calling, or every task is gone: no lines, missing data, breaches;
# outside the shop's hours its actions are off, schedules below); stale session features;
# the day's batch late (1 DailyBatchSucceeded per successful run, batch/job.py: no success for
# batch_late_after_hours hours running, hourly sums, missing data breaching).
locals {
  metric_alarms = {
    no_requests = {
      name               = "scorer-no-requests"
      description        = "No scoring request for 10 minutes during shop hours: check the ECS service's running tasks and the ALB's target health, then whether the shop's backend still calls (its logs, its feature flag, the security groups from shop_cidr_blocks)"
      metric             = "ScoringRequests"
      dimensions         = local.scorer_dimensions
      statistic          = "Sum"
      extended_statistic = null
      period             = 60
      periods            = 10
      threshold          = 1
      comparison         = "LessThanThreshold"
      missing            = "breaching"
    }
    session_feature_age = {
      name               = "session-features-stale"
      description        = "The median age of the session features the scorer reads is above ${var.session_feature_age_alarm_s} s for 10 minutes: the streaming job is behind or stopped (see the Kinesis iterator-age and batch-duration alarms, the stream step's state) or Redis lost its keys"
      metric             = "SessionFeatureAgeSeconds"
      dimensions         = local.scorer_dimensions
      statistic          = null
      extended_statistic = "p50"
      period             = 60
      periods            = 10
      threshold          = var.session_feature_age_alarm_s
      comparison         = "GreaterThanThreshold"
      missing            = "notBreaching"
    }
    batch_late = {
      name               = "daily-batch-late"
      description        = "No daily batch has succeeded for ${var.batch_late_after_hours} hours: user and product features are going stale. Look for the day's cluster (aws emr list-clusters --created-after ...), its step's stderr under emr-logs/ in the artifacts bucket, and re-run the day (README: Replay a day)"
      metric             = "DailyBatchSucceeded"
      dimensions         = {}
      statistic          = "Sum"
      extended_statistic = null
      period             = 3600
      periods            = var.batch_late_after_hours
      threshold          = 1
      comparison         = "LessThanThreshold"
      missing            = "breaching"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "metric" {
  for_each            = local.metric_alarms
  alarm_name          = "${var.name}-${each.value.name}"
  alarm_description   = each.value.description
  namespace           = local.metrics_namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  extended_statistic  = each.value.extended_statistic
  period              = each.value.period
  evaluation_periods  = each.value.periods
  datapoints_to_alarm = each.value.periods
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison
  treat_missing_data  = each.value.missing
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

# Outcomes as they happen: an EMR step of ours that fails, is cancelled or interrupted (the
# batch, the monitor, the retraining), the streaming step leaving RUNNING in any way, and a
# retraining execution that fails or times out.
locals {
  event_rules = {
    emr_step_failed = {
      description = "A propensity EMR step failed, was cancelled or interrupted"
      pattern = {
        source        = ["aws.emr"]
        "detail-type" = ["EMR Step Status Change"]
        detail = {
          name  = [{ prefix = "propensity " }]
          state = ["FAILED", "CANCELLED", "INTERRUPTED"]
        }
      }
      message = "EMR step <name> on cluster <cluster> is <state>: <message>. Runbook: README, 'A job failed'."
    }
    stream_stopped = {
      description = "The streaming step left RUNNING (even COMPLETED: it should never end)"
      pattern = {
        source        = ["aws.emr"]
        "detail-type" = ["EMR Step Status Change"]
        detail = {
          name  = ["propensity stream"]
          state = ["COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"]
        }
      }
      message = "The streaming step on cluster <cluster> is <state>: <message>. Runbook: README, 'The stream stopped'."
    }
    retrain_failed = {
      description = "A retraining execution failed, timed out or was aborted"
      pattern = {
        source        = ["aws.states"]
        "detail-type" = ["Step Functions Execution Status Change"]
        detail = {
          stateMachineArn = [aws_sfn_state_machine.retrain.arn]
          status          = ["FAILED", "TIMED_OUT", "ABORTED"]
        }
      }
      message = "Retraining <name> is <status>. Runbook: README, 'A job failed'."
    }
  }
}

resource "aws_cloudwatch_event_rule" "outcomes" {
  for_each      = local.event_rules
  name          = "${var.name}-${replace(each.key, "_", "-")}"
  description   = each.value.description
  event_pattern = jsonencode(each.value.pattern)
}

resource "aws_cloudwatch_event_target" "outcomes" {
  for_each = local.event_rules
  rule     = aws_cloudwatch_event_rule.outcomes[each.key].name
  arn      = aws_sns_topic.alarms.arn
  input_transformer {
    input_paths = {
      name    = "$.detail.name"
      cluster = "$.detail.clusterId"
      state   = "$.detail.state"
      status  = "$.detail.status"
      message = "$.detail.message"
    }
    input_template = jsonencode(each.value.message)
  }
}

# EventBridge may publish the rules' messages to the (encrypted) alarm topic.
data "aws_iam_policy_document" "alarm_topic" {
  statement {
    sid       = "AlarmsAndRulesPublish"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]
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

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarm_topic.json
}

# Shop hours: at opening the no-requests alarm is reset to OK (so a night without requests
# pages again if the morning brings none) and its actions are switched on; at closing, off.
locals {
  shop_hour_calls = {
    open-reset = {
      at     = var.shop_hours.open
      target = "arn:aws:scheduler:::aws-sdk:cloudwatch:setAlarmState"
      input  = { AlarmName = aws_cloudwatch_metric_alarm.metric["no_requests"].alarm_name, StateValue = "OK", StateReason = "the shop opens" }
    }
    open-enable = {
      at     = var.shop_hours.open
      target = "arn:aws:scheduler:::aws-sdk:cloudwatch:enableAlarmActions"
      input  = { AlarmNames = [aws_cloudwatch_metric_alarm.metric["no_requests"].alarm_name] }
    }
    close-disable = {
      at     = var.shop_hours.close
      target = "arn:aws:scheduler:::aws-sdk:cloudwatch:disableAlarmActions"
      input  = { AlarmNames = [aws_cloudwatch_metric_alarm.metric["no_requests"].alarm_name] }
    }
  }
}

data "aws_iam_policy_document" "shop_hours" {
  statement {
    sid       = "SwitchTheNoRequestsAlarm"
    actions   = ["cloudwatch:SetAlarmState", "cloudwatch:EnableAlarmActions", "cloudwatch:DisableAlarmActions"]
    resources = [aws_cloudwatch_metric_alarm.metric["no_requests"].arn]
  }
}

resource "aws_iam_role" "shop_hours" {
  name               = "${var.name}-shop-hours"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

resource "aws_iam_role_policy" "shop_hours" {
  role   = aws_iam_role.shop_hours.id
  policy = data.aws_iam_policy_document.shop_hours.json
}

resource "aws_scheduler_schedule" "shop_hours" {
  for_each                     = local.shop_hour_calls
  name                         = "${var.name}-shop-hours-${each.key}"
  schedule_expression          = each.value.at
  schedule_expression_timezone = var.shop_hours.timezone
  kms_key_arn                  = aws_kms_key.data.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = each.value.target
    role_arn = aws_iam_role.shop_hours.arn
    input    = jsonencode(each.value.input)
    retry_policy {
      maximum_retry_attempts = 3
    }
  }
}
