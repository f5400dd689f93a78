# Alarms to an encrypted SNS topic: the scorer's p99 and 5xx share, the streaming job's
# lag behind Kinesis and its micro-batch duration (published by the job, see
# PROPENSITY_METRICS_NAMESPACE), and the champion's live quality (the daily monitor).

locals {
  metrics_namespace = "Propensity"
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.data.arn
}

resource "aws_sns_topic_subscription" "alarms" {
  for_each  = toset(var.alarm_emails)
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_cloudwatch_metric_alarm" "scorer_p99" {
  alarm_name          = "${var.name}-scorer-p99-above-100ms"
  alarm_description   = "Scorer p99 latency above the 100 ms budget for 5 minutes"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "TargetResponseTime"
  extended_statistic  = "p99"
  dimensions          = { LoadBalancer = aws_lb.scorer.arn_suffix }
  period              = 60
  evaluation_periods  = 5
  threshold           = 0.1
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "scorer_5xx" {
  alarm_name          = "${var.name}-scorer-5xx-above-1pct"
  alarm_description   = "More than 1% of scorer answers are 5xx (5 minutes)"
  evaluation_periods  = 5
  threshold           = 1
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "share"
    expression  = "100 * (errors_target + errors_lb) / MAX([requests, 1])"
    label       = "5xx share (%)"
    return_data = true
  }
  dynamic "metric_query" {
    for_each = {
      errors_target = "HTTPCode_Target_5XX_Count"
      errors_lb     = "HTTPCode_ELB_5XX_Count"
      requests      = "RequestCount"
    }
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/ApplicationELB"
        metric_name = metric_query.value
        dimensions  = { LoadBalancer = aws_lb.scorer.arn_suffix }
        period      = 60
        stat        = "Sum"
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "kinesis_iterator_age" {
  alarm_name          = "${var.name}-streaming-behind-kinesis"
  alarm_description   = "The streaming job reads events more than 60 s after they arrive (5 minutes)"
  namespace           = "AWS/Kinesis"
  metric_name         = "GetRecords.IteratorAgeMilliseconds"
  dimensions          = { StreamName = aws_kinesis_stream.events.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 60000
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching" # no reads at all is the worst lag
  alarm_actions       = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "streaming_batch_duration" {
  alarm_name          = "${var.name}-streaming-batch-slow"
  alarm_description   = "Streaming micro-batches take over 10 s (features go stale), 5 minutes"
  namespace           = local.metrics_namespace
  metric_name         = "StreamingBatchDurationMs"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 10000
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
}

# The design's quality rule: the champion's live ROC AUC more than 5% below its validation AUC
# two days running (published once a day by the monitor step of the daily batch cluster,
# monitoring/live.py). No data (no monitor run, no labelled answers) is not a breach.
resource "aws_cloudwatch_metric_alarm" "live_auc" {
  alarm_name          = "${var.name}-live-auc-below-validation"
  alarm_description   = "The champion's live ROC AUC below 95% of its validation AUC two days running: look at `propensity monitor --day`, retrain or roll back"
  namespace           = local.metrics_namespace
  metric_name         = "LiveAucRatio"
  dimensions          = { Variant = "champion" }
  statistic           = "Minimum"
  period              = 86400
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = 0.95
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

# The design's drift rules, on the champion's day (the monitor's PSI against the version's
# training profile): any feature above 0.25, or the score above 0.2.
resource "aws_cloudwatch_metric_alarm" "drift" {
  for_each = {
    feature = { metric = "MaxFeaturePsi", threshold = 0.25 }
    score   = { metric = "ScorePsi", threshold = 0.2 }
  }
  alarm_name          = "${var.name}-${each.key}-drift"
  alarm_description   = "The champion's live ${each.key} distribution drifted from training (PSI above ${each.value.threshold}): read the day's report.md under PROPENSITY_MONITORING_URI; retraining may be due"
  namespace           = local.metrics_namespace
  metric_name         = each.value.metric
  dimensions          = { Variant = "champion" }
  statistic           = "Maximum"
  period              = 86400
  evaluation_periods  = 1
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
