# Security groups: Redis answers only the EMR nodes and the scorer tasks; the scorer's
# internal load balancer answers only the shop's backend.

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "ElastiCache: reachable from EMR and the scorer only"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "emr" {
  name        = "${var.name}-emr"
  description = "EMR nodes (streaming and batch clusters): extra group for Redis access"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "scorer_lb" {
  name        = "${var.name}-scorer-lb"
  description = "The scorer's internal load balancer"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "scorer" {
  name        = "${var.name}-scorer"
  description = "Scorer tasks: traffic from the load balancer only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  for_each = {
    emr    = aws_security_group.emr.id
    scorer = aws_security_group.scorer.id
  }
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis (TLS) from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_vpc_security_group_ingress_rule" "lb_from_shop" {
  for_each          = toset(var.shop_cidr_blocks)
  security_group_id = aws_security_group.scorer_lb.id
  description       = "HTTPS from the shop's backend"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "lb_to_scorer" {
  security_group_id            = aws_security_group.scorer_lb.id
  description                  = "To scorer tasks"
  referenced_security_group_id = aws_security_group.scorer.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_vpc_security_group_ingress_rule" "scorer_from_lb" {
  security_group_id            = aws_security_group.scorer.id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.scorer_lb.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_vpc_security_group_egress_rule" "scorer_to_aws" {
  security_group_id = aws_security_group.scorer.id
  description       = "HTTPS to AWS APIs (S3 model store, ECR, logs) via the VPC's endpoints or NAT"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "to_redis" {
  for_each = {
    emr    = aws_security_group.emr.id
    scorer = aws_security_group.scorer.id
  }
  security_group_id            = each.value
  description                  = "To Redis"
  referenced_security_group_id = aws_security_group.redis.id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}
