# Plans the backbone module against mocked providers: no GCP project or credentials needed,
# but Terraform must be able to download hashicorp/google and hashicorp/random once
# (`terraform init` in modules/backbone). Run: terraform -chdir=infra/terraform/modules/backbone test

mock_provider "google" {
  mock_data "google_project" {
    defaults = {
      number = "123456789012"
    }
  }

  mock_data "google_compute_network" {
    defaults = {
      id        = "projects/suitex-test/global/networks/suitex-vpc"
      self_link = "https://www.googleapis.com/compute/v1/projects/suitex-test/global/networks/suitex-vpc"
    }
  }
}

mock_provider "random" {}

variables {
  environment             = "staging"
  project_id              = "suitex-test"
  region                  = "us-central1"
  network_name            = "suitex-vpc"
  existing_peering_ranges = ["suitex-private-services"]
}

run "plan_matches_the_epic" {
  command = plan

  assert {
    condition     = toset([for t in google_pubsub_topic.this : t.name]) == toset(["events.raw", "events.merged", "events.dlq"])
    error_message = "topics must be events.raw, events.merged and events.dlq"
  }

  assert {
    condition     = alltrue([for s in google_pubsub_subscription.dead_lettering : s.enable_message_ordering && s.dead_letter_policy[0].max_delivery_attempts == 5])
    error_message = "raw and merged subscriptions need ordering and 5 delivery attempts"
  }

  assert {
    condition     = google_pubsub_subscription.dead_lettering["raw_worker"].filter == "NOT attributes:backbone_probe" && google_pubsub_subscription.dead_lettering["raw_validation"].filter == "attributes:backbone_probe"
    error_message = "probe filters must split events.raw between the worker and the validation subscription"
  }

  assert {
    condition     = google_storage_bucket.payload_snapshots.name == "suitex-payload-snapshots-staging" && google_storage_bucket.payload_snapshots.public_access_prevention == "enforced"
    error_message = "bucket name or public access prevention is wrong"
  }

  assert {
    condition     = google_sql_database_instance.event_store.settings[0].ip_configuration[0].ipv4_enabled == false && google_sql_database_instance.event_store.settings[0].availability_type == "REGIONAL"
    error_message = "Cloud SQL must be private-only and regional"
  }

  assert {
    condition     = contains(google_service_networking_connection.private_services.reserved_peering_ranges, "suitex-private-services")
    error_message = "the existing peering range must be kept"
  }

  assert {
    condition     = google_pubsub_topic_iam_member.service_agent_dlq_publisher.member == "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
    error_message = "the Pub/Sub service agent must be able to publish dead letters"
  }
}

run "empty_peering_ranges_are_refused" {
  command = plan

  variables {
    existing_peering_ranges = []
  }

  expect_failures = [var.existing_peering_ranges]
}
