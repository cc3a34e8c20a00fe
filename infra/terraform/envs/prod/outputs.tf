output "topics" {
  value = module.backbone.topics
}

output "subscriptions" {
  value = module.backbone.subscriptions
}

output "probe_attribute" {
  value = module.backbone.probe_attribute
}

output "payload_bucket" {
  value = module.backbone.payload_bucket
}

output "worker_service_account" {
  value = module.backbone.worker_service_account
}

output "event_store_connection_name" {
  value = module.backbone.event_store_connection_name
}

output "event_store_private_ip" {
  value = module.backbone.event_store_private_ip
}

output "event_store_database" {
  value = module.backbone.event_store_database
}

output "sync_worker_password_secret" {
  value = module.backbone.sync_worker_password_secret
}

output "migrator_password_secret" {
  value = module.backbone.migrator_password_secret
}
