output "topics" {
  description = "Pub/Sub topic ids by role (raw, merged, dlq)."
  value       = { for key, topic in google_pubsub_topic.this : key => topic.name }
}

output "subscriptions" {
  description = "Ids of the dead-lettering Pub/Sub subscriptions by role (the DLQ's own is in pubsub_dlq.tf)."
  value       = { for key, subscription in google_pubsub_subscription.dead_lettering : key => subscription.name }
}

output "probe_attribute" {
  description = "Attribute that marks validation probes."
  value       = local.probe_attribute
}

output "payload_bucket" {
  description = "Bucket for oversized payload snapshots."
  value       = google_storage_bucket.payload_snapshots.name
}

output "worker_service_account" {
  description = "Email of the worker service account."
  value       = google_service_account.worker.email
}

output "event_store_connection_name" {
  description = "Cloud SQL connection name (project:region:instance)."
  value       = google_sql_database_instance.event_store.connection_name
}

output "event_store_private_ip" {
  description = "Private IP for DB_EVENT_STORE_HOST."
  value       = google_sql_database_instance.event_store.private_ip_address
}

output "event_store_database" {
  description = "Database name for DB_EVENT_STORE_DATABASE."
  value       = google_sql_database.events.name
}

output "sync_worker_password_secret" {
  description = "Secret Manager secret holding DB_EVENT_STORE_PASSWORD."
  value       = google_secret_manager_secret.sync_worker_password.id
}

output "migrator_password_secret" {
  description = "Secret Manager secret holding the migration account's password."
  value       = google_secret_manager_secret.migrator_password.id
}

output "acceptance_databases" {
  description = "Databases acceptance runs write to (DB_EVENT_STORE_DATABASE for `rig validate`/scenarios against GCP); empty where acceptance is off."
  value       = [for db in google_sql_database.acceptance : db.name]
}
