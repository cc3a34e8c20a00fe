resource "google_sql_database_instance" "event_store" {
  project             = var.project_id
  name                = "event-store-${var.environment}"
  region              = var.region
  database_version    = "MYSQL_8_4"
  deletion_protection = true

  depends_on = [google_service_networking_connection.private_services]

  settings {
    tier                        = var.sql_tier
    edition                     = var.sql_edition
    availability_type           = "REGIONAL"
    deletion_protection_enabled = true
    disk_type                   = "PD_SSD"
    disk_size                   = var.sql_disk_size_gb
    disk_autoresize             = true
    user_labels                 = local.labels

    backup_configuration {
      enabled                        = true
      binary_log_enabled             = true
      start_time                     = "03:00"
      transaction_log_retention_days = var.sql_transaction_log_retention_days

      backup_retention_settings {
        retained_backups = var.sql_backup_retained_count
        retention_unit   = "COUNT"
      }
    }

    ip_configuration {
      ipv4_enabled       = false
      private_network    = data.google_compute_network.suitex.id
      allocated_ip_range = google_compute_global_address.event_store.name
      ssl_mode           = "ENCRYPTED_ONLY"
    }

    # The append-only migration creates triggers; with binary logging on, MySQL refuses
    # that to non-SUPER users unless this flag is set.
    database_flags {
      name  = "log_bin_trust_function_creators"
      value = "on"
    }

    maintenance_window {
      day          = 7
      hour         = 4
      update_track = "stable"
    }
  }
}

resource "google_sql_database" "events" {
  project   = var.project_id
  instance  = google_sql_database_instance.event_store.name
  name      = "events"
  charset   = "utf8mb4"
  collation = "utf8mb4_unicode_ci"
}

# Acceptance runs write their rows here, never into the real ledger: the same schema (run the
# migrations against it too), the same grants for sync_worker, dev and staging only.
resource "google_sql_database" "acceptance" {
  for_each = var.acceptance_enabled ? toset(["events_acceptance"]) : toset([])

  project   = var.project_id
  instance  = google_sql_database_instance.event_store.name
  name      = each.value
  charset   = "utf8mb4"
  collation = "utf8mb4_unicode_ci"
}

# The background worker's account. Its rights inside MySQL are set by the migrations.
resource "google_sql_user" "sync_worker" {
  project  = var.project_id
  instance = google_sql_database_instance.event_store.name
  name     = "sync_worker"
  host     = "%"
  password = random_password.sync_worker.result
}

# The deploy pipeline's account: runs the migrations (DDL, triggers, grants).
resource "google_sql_user" "migrator" {
  project  = var.project_id
  instance = google_sql_database_instance.event_store.name
  name     = "event_store_migrator"
  host     = "%"
  password = random_password.migrator.result
}
