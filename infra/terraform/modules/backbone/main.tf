locals {
  # Probes carry this attribute; the subscription filters below are built from it so the
  # validation subscription and the worker subscriptions can never disagree on its name.
  probe_attribute = "backbone_probe"

  topics = {
    raw    = "events.raw"
    merged = "events.merged"
    dlq    = "events.dlq"
  }

  # Every subscription that consumes real or probe traffic; each one dead-letters to events.dlq.
  dead_lettering_subscriptions = {
    raw_worker = {
      name   = "events.raw.worker"
      topic  = "raw"
      filter = "NOT attributes:${local.probe_attribute}"
    }
    raw_validation = {
      name   = "events.raw.validation"
      topic  = "raw"
      filter = "attributes:${local.probe_attribute}"
    }
    merged_worker = {
      name   = "events.merged.worker"
      topic  = "merged"
      filter = null
    }
  }

  labels = merge(var.labels, {
    component   = "event-backbone"
    environment = var.environment
  })

  # The Pub/Sub service agent performs dead-lettering; it needs its own grants (iam.tf).
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  worker_member        = "serviceAccount:${google_service_account.worker.email}"
}

data "google_project" "this" {
  project_id = var.project_id
}
