# A topic with no subscription drops what it receives, so dead letters need a subscription
# to stay readable. Everything that depends on it lives in this file.
resource "google_pubsub_subscription" "dlq_inspect" {
  project = var.project_id
  name    = "events.dlq.inspect"
  topic   = google_pubsub_topic.this["dlq"].id
  labels  = merge(local.labels, { purpose = "inspect" })
  # Dead-lettered probes keep their attributes; operators never see them here.
  filter = "NOT attributes:${local.probe_attribute}"

  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.dead_letter_retention
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription_iam_member" "worker_dlq_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.dlq_inspect.name
  role         = "roles/pubsub.subscriber"
  member       = local.worker_member
}

output "dead_letter_subscription" {
  description = "Id of the subscription that keeps dead letters readable."
  value       = google_pubsub_subscription.dlq_inspect.name
}
