resource "google_pubsub_topic" "this" {
  for_each = local.topics

  project = var.project_id
  name    = each.value
  labels  = local.labels
}

resource "google_pubsub_subscription" "dead_lettering" {
  for_each = local.dead_lettering_subscriptions

  project = var.project_id
  name    = each.value.name
  topic   = google_pubsub_topic.this[each.value.topic].id
  filter  = each.value.filter
  labels  = merge(local.labels, { purpose = each.value.purpose })

  # Ordering is a subscription property in Pub/Sub: publishers set ordering keys, and only
  # subscriptions with this flag deliver a key's messages in order.
  enable_message_ordering = true
  ack_deadline_seconds    = var.ack_deadline_seconds

  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.this["dlq"].id
    max_delivery_attempts = 5
  }

  # An idle subscription (a quiet dev environment) must not expire after 31 days.
  expiration_policy {
    ttl = ""
  }
}
