# Passwords are generated here and handed out through Secret Manager only. They do live in
# the Terraform state, which is why the state bucket is access-controlled (README).
resource "random_password" "sync_worker" {
  length  = 40
  special = false
}

resource "random_password" "migrator" {
  length  = 40
  special = false
}

resource "google_secret_manager_secret" "sync_worker_password" {
  project   = var.project_id
  secret_id = "event-store-sync-worker-password-${var.environment}"
  labels    = local.labels

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "sync_worker_password" {
  secret      = google_secret_manager_secret.sync_worker_password.id
  secret_data = random_password.sync_worker.result
}

resource "google_secret_manager_secret" "migrator_password" {
  project   = var.project_id
  secret_id = "event-store-migrator-password-${var.environment}"
  labels    = local.labels

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "migrator_password" {
  secret      = google_secret_manager_secret.migrator_password.id
  secret_data = random_password.migrator.result
}
