# The Feast online store: a Redis replication group, Multi-AZ with automatic failover, TLS in
# transit, encrypted at rest, with an auth token kept in Secrets Manager. The secret holds
# the whole connection string in Feast's format (PROPENSITY_REDIS), so the scorer and the
# EMR steps read one value.

resource "random_password" "redis" {
  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "redis" {
  #checkov:skip=CKV2_AWS_57:rotating an ElastiCache AUTH token needs a rotation Lambda using its ROTATE strategy; the runbook rotates with terraform apply -replace=random_password.redis
  name        = "${var.name}/redis"
  description = "PROPENSITY_REDIS: Feast connection string with the auth token"
  kms_key_id  = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id     = aws_secretsmanager_secret.redis.id
  secret_string = "${aws_elasticache_replication_group.online.primary_endpoint_address}:6379,ssl=true,password=${random_password.redis.result}"
}

resource "aws_elasticache_subnet_group" "online" {
  name       = "${var.name}-online"
  subnet_ids = var.private_subnet_ids
}

resource "aws_elasticache_replication_group" "online" {
  replication_group_id       = "${var.name}-online"
  description                = "Feast online store (session, user and product features)"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = 1 + var.redis_replicas
  port                       = 6379
  multi_az_enabled           = true
  automatic_failover_enabled = true
  transit_encryption_enabled = true
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.data.arn
  auth_token                 = random_password.redis.result
  subnet_group_name          = aws_elasticache_subnet_group.online.name
  security_group_ids         = [aws_security_group.redis.id]
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
  apply_immediately          = false
}
