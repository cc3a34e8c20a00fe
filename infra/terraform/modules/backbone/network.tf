# The SuiteX VPC already exists and carries the existing SuiteX database: look it up, never
# manage it.
data "google_compute_network" "suitex" {
  project = var.project_id
  name    = var.network_name
}

# A range of its own for the event store, so it never competes for addresses with the
# existing database's range.
resource "google_compute_global_address" "event_store" {
  project       = var.project_id
  name          = "event-store-psa-${var.environment}"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = var.event_store_range_prefix_length
  network       = data.google_compute_network.suitex.id
}

# This resource owns the peering's WHOLE range list: whatever is not listed here is removed.
# The existing ranges are therefore passed back unchanged, ahead of the new one, and the
# connection is never deleted by Terraform (see README, "Private services access").
resource "google_service_networking_connection" "private_services" {
  network                 = data.google_compute_network.suitex.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = concat(var.existing_peering_ranges, [google_compute_global_address.event_store.name])
  update_on_creation_fail = true
  deletion_policy         = "ABANDON"
}
