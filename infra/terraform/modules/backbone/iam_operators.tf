# What a person needs to check the backbone against this Terraform (`rig drift`) and to run
# staging acceptance (`rig validate|scenarios --target gcp`), and nothing more: see docs/gcp.md.

# Read-only: the fields `rig drift` compares. No list, no data access, no IAM changes.
resource "google_project_iam_custom_role" "drift_reader" {
  project     = var.project_id
  role_id     = "backboneDriftReader_${var.environment}"
  title       = "Backbone drift reader (${var.environment})"
  description = "Reads the backbone's live configuration for `rig drift`; changes nothing."
  permissions = [
    "pubsub.topics.get",
    "pubsub.subscriptions.get",
    "pubsub.topics.getIamPolicy",
    "pubsub.subscriptions.getIamPolicy",
    "storage.buckets.get",
    "cloudsql.instances.get",
    "resourcemanager.projects.get",
    "servicenetworking.services.get",
  ]
}

resource "google_project_iam_member" "drift_reader" {
  for_each = toset(var.drift_readers)

  project = var.project_id
  role    = google_project_iam_custom_role.drift_reader.id
  member  = each.value
}

# `rig drift` calls testIamPermissions as the worker, and acceptance runs act as the worker:
# both by impersonation, which is all these members get.
resource "google_service_account_iam_member" "worker_impersonators" {
  for_each = toset(concat(var.drift_readers, var.acceptance_runners))

  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value
}
