# Values live in terraform.tfvars next to this file; everything else in this directory is
# identical across dev, staging and prod (checked by tests/terraform_policy.rs).

variable "environment" {
  description = "dev, staging or prod."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be one of dev, staging, prod."
  }
}

variable "project_id" {
  description = "GCP project of this environment."
  type        = string
}

variable "region" {
  description = "Region for Cloud SQL and the payload bucket."
  type        = string
}

variable "network_name" {
  description = "Name of the existing SuiteX VPC in this project."
  type        = string
}

variable "existing_peering_ranges" {
  description = "Allocated ranges already on the VPC's servicenetworking peering; see README before changing."
  type        = list(string)
}

variable "sql_tier" {
  description = "Cloud SQL machine tier."
  type        = string
}

variable "sql_backup_retained_count" {
  description = "Number of daily automated backups kept."
  type        = number
}

variable "retry_minimum_backoff" {
  description = "Shortest wait before a nacked message is redelivered (dev keeps it short for fast feedback)."
  type        = string
  default     = "10s"
}

variable "retry_maximum_backoff" {
  description = "Longest wait before a nacked message is redelivered."
  type        = string
  default     = "600s"
}

variable "acceptance_enabled" {
  description = "Provision the staging-acceptance subscriptions and database (dev and staging only)."
  type        = bool
  default     = false
}

variable "drift_readers" {
  description = "Members who may run `rig drift` (see docs/gcp.md)."
  type        = list(string)
  default     = []
}

variable "acceptance_runners" {
  description = "Members who may run staging acceptance as the worker (see docs/gcp.md)."
  type        = list(string)
  default     = []
}
