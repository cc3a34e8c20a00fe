bucket = "suitex-prod-terraform-state"
prefix = "event-backbone"
