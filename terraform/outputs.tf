# Outputs in UPPER_CASE are named exactly like the environment variables the code reads
# (propensity/settings.py; a test checks), so `terraform output` plugs straight into the
# settings. The lower_case ones are for the operator (runbook in the README).

output "AWS_DEFAULT_REGION" {
  value = var.region
}

output "PROPENSITY_KINESIS_STREAM" {
  value = aws_kinesis_stream.events.name
}

output "PROPENSITY_EVENTS_URI" {
  value = local.node_settings.PROPENSITY_EVENTS_URI
}

output "PROPENSITY_QUARANTINE_URI" {
  value = local.node_settings.PROPENSITY_QUARANTINE_URI
}

output "PROPENSITY_FEATURES_URI" {
  value = local.node_settings.PROPENSITY_FEATURES_URI
}

output "PROPENSITY_MODELS_URI" {
  value = local.node_settings.PROPENSITY_MODELS_URI
}

output "PROPENSITY_FEAST_REGISTRY" {
  value = local.node_settings.PROPENSITY_FEAST_REGISTRY
}

output "PROPENSITY_CHECKPOINT_DIR" {
  value = local.node_settings.PROPENSITY_CHECKPOINT_DIR
}

output "PROPENSITY_SPARK_MASTER" {
  value = local.node_settings.PROPENSITY_SPARK_MASTER
}

output "PROPENSITY_METRICS_NAMESPACE" {
  value = local.metrics_namespace
}

output "PROPENSITY_PREDICTIONS_URI" {
  value = local.node_settings.PROPENSITY_PREDICTIONS_URI
}

output "PROPENSITY_MONITORING_URI" {
  value = local.node_settings.PROPENSITY_MONITORING_URI
}

output "PROPENSITY_REDIS" {
  description = "Feast connection string with the auth token (also in Secrets Manager)"
  value       = aws_secretsmanager_secret_version.redis.secret_string
  sensitive   = true
}

output "artifacts_uri" {
  description = "Where `make package` output goes: aws s3 sync dist/emr <artifacts_uri>/"
  value       = local.artifacts
}

output "scorer_ecr_repository" {
  value = aws_ecr_repository.scorer.repository_url
}

output "scorer_url" {
  description = "The scorer's internal HTTPS endpoint (use the certificate's name in DNS)"
  value       = "https://${aws_lb.scorer.dns_name}"
}

output "streaming_cluster_id" {
  value = aws_emr_cluster.streaming.id
}
