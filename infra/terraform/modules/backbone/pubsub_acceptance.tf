# Staging acceptance (dev and staging only; docs/gcp.md). Probe-marked events published by an
# acceptance run reach the probe-only subscriptions in main.tf (`acceptance_subscriptions`,
# provisioned with the worker's settings by pubsub.tf) and, when they fail, events.dlq like any
# event: they are read back and acknowledged here, so nothing is left behind for operators.
resource "google_pubsub_subscription" "dlq_acceptance" {
  for_each = var.acceptance_enabled ? toset(["events.dlq.acceptance"]) : toset([])

  project = var.project_id
  name    = each.value
  topic   = google_pubsub_topic.this["dlq"].id
  labels  = merge(local.labels, { purpose = "acceptance" })
  filter  = "attributes:${local.probe_attribute}"

  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = "86400s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription_iam_member" "worker_dlq_acceptance_subscriber" {
  for_each = google_pubsub_subscription.dlq_acceptance

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.worker_member
}
