bucket = "suitex-dev-terraform-state"
prefix = "event-backbone"
