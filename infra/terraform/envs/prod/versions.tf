terraform {
  required_version = ">= 1.7"

  # Partial configuration: the bucket and prefix come from this directory's backend.hcl
  # (terraform init -backend-config=backend.hcl), so this file stays identical in every env.
  backend "gcs" {}

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.14, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
