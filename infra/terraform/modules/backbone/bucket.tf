resource "google_storage_bucket" "payload_snapshots" {
  project  = var.project_id
  name     = "suitex-payload-snapshots-${var.environment}"
  location = var.region
  labels   = local.labels

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Snapshots only back messages in flight; after 30 days nothing refers to them.
  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }
}
