module "backbone" {
  source = "../../modules/backbone"

  environment               = var.environment
  project_id                = var.project_id
  region                    = var.region
  network_name              = var.network_name
  existing_peering_ranges   = var.existing_peering_ranges
  sql_tier                  = var.sql_tier
  sql_backup_retained_count = var.sql_backup_retained_count
  retry_minimum_backoff     = var.retry_minimum_backoff
  retry_maximum_backoff     = var.retry_maximum_backoff
  acceptance_enabled        = var.acceptance_enabled
  drift_readers             = var.drift_readers
  acceptance_runners        = var.acceptance_runners
}
