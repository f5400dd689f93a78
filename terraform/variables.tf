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
