# Outputs are named exactly like the environment variables the code reads
# (propensity/settings.py), so `terraform output` plugs straight into the settings.

output "AWS_DEFAULT_REGION" {
  value = var.region
}

output "PROPENSITY_KINESIS_STREAM" {
  value = aws_kinesis_stream.events.name
}

output "PROPENSITY_EVENTS_URI" {
  value = "s3://${aws_s3_bucket.data["lake"].bucket}/events"
}

output "PROPENSITY_QUARANTINE_URI" {
  value = "s3://${aws_s3_bucket.data["lake"].bucket}/quarantine"
}

output "PROPENSITY_FEATURES_URI" {
  value = "s3://${aws_s3_bucket.data["features"].bucket}/features"
}

output "PROPENSITY_MODELS_URI" {
  value = "s3://${aws_s3_bucket.data["models"].bucket}/models"
}
