locals {
  # Probes carry this attribute; the subscription filters below are built from it so the
  # validation subscription and the worker subscriptions can never disagree on its name.
  probe_attribute = "backbone_probe"

  topics = {
    raw    = "events.raw"
    merged = "events.merged"
    dlq    = "events.dlq"
  }

  # Every subscription that consumes real or probe traffic; each one dead-letters to events.dlq
  # with the same ordering, ack deadline and retry settings. `purpose` becomes a label that the
  # rig reads: `worker` and `validation` exist everywhere, `acceptance` in dev and staging only.
  dead_lettering_subscriptions = merge({
    raw_worker = {
      name    = "events.raw.worker"
      topic   = "raw"
      filter  = "NOT attributes:${local.probe_attribute}"
      purpose = "worker"
    }
    raw_validation = {
      name    = "events.raw.validation"
      topic   = "raw"
      filter  = "attributes:${local.probe_attribute}"
      purpose = "validation"
    }
    # Downstream consumers never see probes either: acceptance runs publish probe-marked
    # events to events.merged.
    merged_worker = {
      name    = "events.merged.worker"
      topic   = "merged"
      filter  = "NOT attributes:${local.probe_attribute}"
      purpose = "worker"
    }
  }, local.acceptance_subscriptions)

  # Staging acceptance (`rig validate` and the scenarios against GCP) consumes probes only, and
  # only through these: real traffic and the worker's subscriptions are never touched.
  acceptance_subscriptions = var.acceptance_enabled ? {
    raw_acceptance = {
      name    = "events.raw.acceptance"
      topic   = "raw"
      filter  = "attributes:${local.probe_attribute}"
      purpose = "acceptance"
    }
    merged_acceptance = {
      name    = "events.merged.acceptance"
      topic   = "merged"
      filter  = "attributes:${local.probe_attribute}"
      purpose = "acceptance"
    }
  } : {}

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
