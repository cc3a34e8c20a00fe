# Without these grants Pub/Sub cannot forward a message to events.dlq nor ack it on the
# source subscription, and dead-lettering silently never happens.
resource "google_pubsub_topic_iam_member" "service_agent_dlq_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.this["dlq"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "service_agent_subscriber" {
  for_each = local.dead_lettering_subscriptions

  project      = var.project_id
  subscription = google_pubsub_subscription.dead_lettering[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
