resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "backbone-worker-${var.environment}"
  display_name = "Event backbone worker (${var.environment})"
  description  = "Ingest worker and validation command: publishes and consumes the backbone topics, writes payload snapshots."
}

# Grants sit on the backbone's own topics, subscriptions and bucket, so the worker cannot
# touch any other Pub/Sub or GCS resource in the project.

# events.dlq is included: the worker dead-letters input it can never process, with a reason.
resource "google_pubsub_topic_iam_member" "worker_publisher" {
  for_each = local.topics

  project = var.project_id
  topic   = google_pubsub_topic.this[each.key].name
  role    = "roles/pubsub.publisher"
  member  = local.worker_member
}

resource "google_pubsub_subscription_iam_member" "worker_subscriber" {
  for_each = local.dead_lettering_subscriptions

  project      = var.project_id
  subscription = google_pubsub_subscription.dead_lettering[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.worker_member
}

resource "google_storage_bucket_iam_member" "worker_object_admin" {
  bucket = google_storage_bucket.payload_snapshots.name
  role   = "roles/storage.objectAdmin"
  member = local.worker_member
}

# The worker reads its own database password at start-up, and nothing else from Secret Manager.
resource "google_secret_manager_secret_iam_member" "worker_password_accessor" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.sync_worker_password.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.worker_member
}
