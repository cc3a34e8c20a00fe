variable "environment" {
  description = "Deployment environment; part of every resource name so environments never collide."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be one of dev, staging, prod."
  }
}

variable "project_id" {
  description = "GCP project that holds the backbone (and the existing SuiteX VPC)."
  type        = string
}

variable "region" {
  description = "Region for the Cloud SQL instance and the payload bucket."
  type        = string
}

variable "network_name" {
  description = "Name of the EXISTING SuiteX VPC. It is looked up, never created or modified here."
  type        = string
}

variable "existing_peering_ranges" {
  description = "Names of the allocated ranges already on the VPC's servicenetworking peering (the existing SuiteX Cloud SQL uses them). They are passed back unchanged so the peering keeps them; see README."
  type        = list(string)

  validation {
    condition     = length(var.existing_peering_ranges) > 0
    error_message = "List the peering's current ranges (gcloud services vpc-peerings list --network=NETWORK): an empty list would drop the existing SuiteX database's range."
  }
}

variable "event_store_range_prefix_length" {
  description = "Size of the new allocated range for the event store (a /24 holds several Cloud SQL instances)."
  type        = number
  default     = 24
}

variable "sql_tier" {
  description = "Cloud SQL machine tier."
  type        = string
  default     = "db-custom-2-7680"
}

variable "sql_edition" {
  description = "Cloud SQL edition; ENTERPRISE keeps the custom tiers available for MySQL 8.4."
  type        = string
  default     = "ENTERPRISE"
}

variable "sql_disk_size_gb" {
  description = "Initial disk size; autoresize grows it."
  type        = number
  default     = 20
}

variable "sql_backup_retained_count" {
  description = "Number of daily automated backups kept."
  type        = number
  default     = 14
}

variable "sql_transaction_log_retention_days" {
  description = "Days of binary logs kept for point-in-time recovery (1-7 on the ENTERPRISE edition)."
  type        = number
  default     = 7
}

variable "ack_deadline_seconds" {
  description = "Time a subscriber has to ack before Pub/Sub redelivers."
  type        = number
  default     = 60
}

variable "retry_minimum_backoff" {
  description = "Shortest wait before a nacked message is redelivered."
  type        = string
  default     = "10s"
}

variable "retry_maximum_backoff" {
  description = "Longest wait before a nacked message is redelivered."
  type        = string
  default     = "600s"
}

variable "dead_letter_retention" {
  description = "How long unacked dead letters stay on events.dlq.inspect (Pub/Sub maximum is 7 days)."
  type        = string
  default     = "604800s"
}

variable "labels" {
  description = "Extra labels for every labelled resource."
  type        = map(string)
  default     = {}
}

variable "acceptance_enabled" {
  description = "Provision what staging acceptance runs use (probe-only subscriptions, the events_acceptance database). dev and staging only: prod must leave it false."
  type        = bool
  default     = false

  validation {
    condition     = !(var.acceptance_enabled && var.environment == "prod")
    error_message = "acceptance resources are for dev and staging only; prod never runs acceptance."
  }
}

variable "drift_readers" {
  description = "Members (user:, group:, serviceAccount:) who may run `rig drift`: the read-only drift reader role, and impersonation of the worker for testIamPermissions."
  type        = list(string)
  default     = []
}

variable "acceptance_runners" {
  description = "Members who may run staging acceptance (`rig validate|scenarios --target gcp`): impersonation of the worker only (dev and staging)."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.acceptance_runners) == 0 || var.environment != "prod"
    error_message = "Acceptance runs are for dev and staging only: prod has no acceptance resources."
  }
}
