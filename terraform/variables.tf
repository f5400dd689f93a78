variable "region" {
  description = "AWS region for every resource."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Prefix of resource names; bucket names add the account id to be unique."
  type        = string
  default     = "propensity"
}

variable "kinesis_shards" {
  description = "Shards of the clickstream; 0 selects on-demand capacity."
  type        = number
  default     = 2
}

variable "kinesis_retention_hours" {
  description = "How long Kinesis keeps events (replay window after a lost checkpoint)."
  type        = number
  default     = 72
}

variable "retention_days" {
  description = "Days each dataset keeps a day's objects (lake, archive, quarantine, predictions; 0: forever), over the defaults in propensity/retention_days.json. The S3 lifecycle expires them and the jobs read the same values."
  type        = map(number)
  default     = {}
}

variable "noncurrent_version_days" {
  description = "How long superseded object versions are kept (recovery window)."
  type        = number
  default     = 30
}

variable "vpc_id" {
  description = "Existing VPC for Redis, EMR and the scorer."
  type        = string
}

variable "private_subnet_ids" {
  description = "Existing private subnets (two or more, in different AZs)."
  type        = list(string)
}

variable "shop_cidr_blocks" {
  description = "Where the shop's backend calls the scorer's internal load balancer from."
  type        = list(string)
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_replicas" {
  description = "Replicas per shard (at least 1 for automatic failover)."
  type        = number
  default     = 1
}

variable "emr_instance_type" {
  description = "Instance type of the EMR primary and core nodes."
  type        = string
  default     = "m7g.xlarge"
}

variable "emr_core_count" {
  description = "Core nodes of the streaming cluster."
  type        = number
  default     = 2
}

variable "stream_state_partitions" {
  description = "Tasks of the streaming job's stateful step (PROPENSITY_STREAM_STATE_PARTITIONS), recorded with its checkpoint when the checkpoint is created and kept for its life; 0: the streaming cluster's cores (core nodes x the instance type's vCPUs). Size it for the cluster the stream will grow to: more core nodes later cannot add state partitions to a checkpoint."
  type        = number
  default     = 0
}

variable "batch_core_count" {
  description = "Core nodes of each day's transient batch cluster."
  type        = number
  default     = 4
}

variable "batch_schedule" {
  description = "When the daily batch runs (EventBridge Scheduler expression, UTC)."
  type        = string
  default     = "cron(30 0 * * ? *)"
}

variable "package_version" {
  description = "Version of the propensity wheel in the artifacts bucket (make package)."
  type        = string
  default     = "0.1.0"
}

variable "scorer_image_tag" {
  description = "Tag of the scorer image in ECR (immutable tags)."
  type        = string
}

variable "scorer_cpu" {
  description = "Fargate CPU units per scorer task."
  type        = number
  default     = 1024
}

variable "scorer_memory" {
  description = "Fargate memory (MiB) per scorer task."
  type        = number
  default     = 2048
}

variable "scorer_min_tasks" {
  description = "Scorer tasks always warm."
  type        = number
  default     = 2
}

variable "scorer_max_tasks" {
  description = "Upper bound of scorer autoscaling."
  type        = number
  default     = 10
}

variable "scorer_requests_per_target" {
  description = "Target requests per task per minute for autoscaling."
  type        = number
  default     = 60000
}

variable "scorer_certificate_arn" {
  description = "ACM certificate of the scorer's internal HTTPS listener."
  type        = string
}

variable "shop_hours" {
  description = "When the shop expects traffic: the no-requests alarm pages only between open and close (EventBridge Scheduler cron expressions in the time zone)."
  type = object({
    open     = string
    close    = string
    timezone = string
  })
  default = {
    open     = "cron(0 7 * * ? *)"
    close    = "cron(0 23 * * ? *)"
    timezone = "UTC"
  }
}

variable "session_feature_age_alarm_s" {
  description = "Alarm when the median age of the session features the scorer reads (time since the session's last event reached Redis) stays above this many seconds for 10 minutes."
  type        = number
  default     = 120
}

variable "batch_late_after_hours" {
  description = "Alarm when no daily batch has succeeded for this many hours (with the 00:30 schedule and a batch of about an hour: the day's batch is late by 02:30 the next day)."
  type        = number
  default     = 26
}

variable "alarm_emails" {
  description = "Who the alarms notify."
  type        = list(string)
  default     = []
}

variable "retrain_schedule" {
  description = "When the model is retrained (EventBridge Scheduler expression, UTC); the champion's quality and drift alarms start a retrain too."
  type        = string
  default     = "rate(14 days)"
}

variable "retrain_days" {
  description = "The lake's newest days a retrain learns from (the newest 7 of them validate)."
  type        = number
  default     = 28
}
