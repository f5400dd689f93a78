# The scorer: an image in ECR, an ECS Fargate service of at least two warm tasks behind an
# internal HTTPS load balancer whose health check is /ready, scaled on requests per task.

locals {
  scorer_port = 8000
  scorer_settings = {
    AWS_DEFAULT_REGION             = var.region
    PROPENSITY_MODELS_URI          = local.node_settings.PROPENSITY_MODELS_URI
    PROPENSITY_PREDICTIONS_URI     = local.node_settings.PROPENSITY_PREDICTIONS_URI
    PROPENSITY_SERVING_DEADLINE_MS = "20"
    PROPENSITY_MODEL_POLL_S        = "30"
    PROPENSITY_METRICS_NAMESPACE   = local.metrics_namespace # its EMF lines (serving/emf.py)
    PYTHONDONTWRITEBYTECODE        = "1"
  }
}

resource "aws_ecr_repository" "scorer" {
  name                 = "${var.name}-scorer"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.data.arn
  }
}

resource "aws_ecs_cluster" "scorer" {
  name = "${var.name}-scorer"
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "scorer" {
  name              = "/${var.name}/scorer"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.data.arn
}

# Execution role: pull the image, write logs, read the Redis secret into the environment.
resource "aws_iam_role" "scorer_execution" {
  name               = "${var.name}-scorer-execution"
  assume_role_policy = data.aws_iam_policy_document.assume["ecs_tasks"].json
}

resource "aws_iam_role_policy_attachment" "scorer_execution" {
  role       = aws_iam_role.scorer_execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "scorer_execution_secret" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.redis.arn]
  }
  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]
  }
}

resource "aws_iam_role_policy" "scorer_execution_secret" {
  role   = aws_iam_role.scorer_execution.id
  policy = data.aws_iam_policy_document.scorer_execution_secret.json
}

# Task role: read the model store and add objects to the prediction log, nothing else (it
# cannot write the lake or the models, nor read or delete the log).
data "aws_iam_policy_document" "scorer_task" {
  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.data["models"].arn, "${aws_s3_bucket.data["models"].arn}/*"]
  }
  statement {
    sid       = "AppendPredictionLog"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data["predictions"].arn}/log/*"]
  }
  statement {
    sid       = "UseDataKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

resource "aws_iam_role" "scorer_task" {
  name               = "${var.name}-scorer-task"
  assume_role_policy = data.aws_iam_policy_document.assume["ecs_tasks"].json
}

resource "aws_iam_role_policy" "scorer_task" {
  role   = aws_iam_role.scorer_task.id
  policy = data.aws_iam_policy_document.scorer_task.json
}

resource "aws_ecs_task_definition" "scorer" {
  family                   = "${var.name}-scorer"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.scorer_cpu
  memory                   = var.scorer_memory
  execution_role_arn       = aws_iam_role.scorer_execution.arn
  task_role_arn            = aws_iam_role.scorer_task.arn
  container_definitions = jsonencode([{
    name                   = "scorer"
    image                  = "${aws_ecr_repository.scorer.repository_url}:${var.scorer_image_tag}"
    essential              = true
    readonlyRootFilesystem = true
    user                   = "10001"
    command                = ["python", "-m", "propensity.serving", "--host", "0.0.0.0", "--port", tostring(local.scorer_port)]
    portMappings           = [{ containerPort = local.scorer_port, protocol = "tcp" }]
    environment            = [for k, v in local.scorer_settings : { name = k, value = v }]
    secrets                = [{ name = "PROPENSITY_REDIS", valueFrom = aws_secretsmanager_secret.redis.arn }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.scorer.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "scorer"
      }
    }
  }])
}

resource "aws_lb" "scorer" {
  name                       = "${var.name}-scorer"
  internal                   = true
  load_balancer_type         = "application"
  subnets                    = var.private_subnet_ids
  security_groups            = [aws_security_group.scorer_lb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  idle_timeout               = 60 # below the scorer's keep-alive (serving/server.py: KEEP_ALIVE_S)
  access_logs {
    bucket  = aws_s3_bucket.data["artifacts"].bucket
    prefix  = "alb-logs"
    enabled = true
  }
}

resource "aws_lb_target_group" "scorer" {
  name        = "${var.name}-scorer"
  port        = local.scorer_port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    path                = "/ready"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
    timeout             = 5
  }
  deregistration_delay = 15
}

resource "aws_lb_listener" "scorer" {
  load_balancer_arn = aws_lb.scorer.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.scorer_certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.scorer.arn
  }
}

resource "aws_ecs_service" "scorer" {
  name                              = "${var.name}-scorer"
  cluster                           = aws_ecs_cluster.scorer.id
  task_definition                   = aws_ecs_task_definition.scorer.arn
  desired_count                     = var.scorer_min_tasks
  launch_type                       = "FARGATE"
  health_check_grace_period_seconds = 60
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.scorer.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.scorer.arn
    container_name   = "scorer"
    container_port   = local.scorer_port
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  # Autoscaling owns the count after creation; the delivery workflow (ops/deliver.py) owns
  # the running task definition: it deploys the family's newest revision, this file's
  # included, with the image it built.
  lifecycle {
    ignore_changes = [desired_count, task_definition]
  }
}

resource "aws_appautoscaling_target" "scorer" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.scorer.name}/${aws_ecs_service.scorer.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.scorer_min_tasks
  max_capacity       = var.scorer_max_tasks
}

resource "aws_appautoscaling_policy" "scorer_requests" {
  name               = "${var.name}-scorer-requests"
  service_namespace  = aws_appautoscaling_target.scorer.service_namespace
  resource_id        = aws_appautoscaling_target.scorer.resource_id
  scalable_dimension = aws_appautoscaling_target.scorer.scalable_dimension
  policy_type        = "TargetTrackingScaling"
  target_tracking_scaling_policy_configuration {
    target_value       = var.scorer_requests_per_target
    scale_in_cooldown  = 120
    scale_out_cooldown = 30
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.scorer.arn_suffix}/${aws_lb_target_group.scorer.arn_suffix}"
    }
  }
}
