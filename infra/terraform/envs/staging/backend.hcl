bucket = "suitex-staging-terraform-state"
prefix = "event-backbone"
