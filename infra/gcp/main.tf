# syncd bucket-event handler on Google Cloud: one 2nd-gen Cloud Function per GCS event type
# (finalized, deleted), triggered through Eventarc, delivering to a syncd API.
#
# Build the source first: `python infra/package.py gcp` writes dist/gcp.zip; upload it to
# var.source_bucket as var.source_object. The API token lives in Secret Manager; only its name
# is given here. The equivalent gcloud commands are in README.md beside this file.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "project" {
  type        = string
  description = "GCP project id"
}

variable "region" {
  type        = string
  description = "Region of the functions; must match the bucket's location for Eventarc"
}

variable "bucket" {
  type        = string
  description = "The GCS bucket whose object events feed the dataset"
}

variable "syncd_api_url" {
  type        = string
  description = "Base URL of the syncd API (syncd serve)"
}

variable "api_token_secret" {
  type        = string
  description = "Secret Manager secret id holding the syncd API token (not the token)"
}

variable "source_bucket" {
  type        = string
  description = "Bucket holding the packaged function source (dist/gcp.zip)"
}

variable "source_object" {
  type        = string
  default     = "syncd-gcp.zip"
  description = "Object name of the packaged source in source_bucket"
}

locals {
  event_types = {
    finalized = "google.cloud.storage.object.v1.finalized"
    deleted   = "google.cloud.storage.object.v1.deleted"
  }
}

data "google_project" "this" {
  project_id = var.project
}

data "google_storage_project_service_account" "gcs" {
  project = var.project
}

resource "google_service_account" "handler" {
  project      = var.project
  account_id   = "syncd-events"
  display_name = "syncd bucket-event handler"
}

# GCS publishes the object events that Eventarc delivers
resource "google_project_iam_member" "gcs_pubsub_publisher" {
  project = var.project
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_project_iam_member" "event_receiver" {
  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.handler.email}"
}

resource "google_secret_manager_secret_iam_member" "token_reader" {
  project   = var.project
  secret_id = var.api_token_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.handler.email}"
}

resource "google_cloudfunctions2_function" "handler" {
  for_each = local.event_types

  project     = var.project
  location    = var.region
  name        = "syncd-gcs-${each.key}"
  description = "syncd: GCS ${each.key} events into datasets"

  build_config {
    runtime     = "python313"
    entry_point = "on_object_event"
    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  service_config {
    max_instance_count             = 5
    available_memory               = "256M"
    timeout_seconds                = 60
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.handler.email
    environment_variables = {
      SYNCD_API_URL = var.syncd_api_url
      LOG_LEVEL     = "INFO"
    }
    secret_environment_variables {
      key        = "SYNCD_API_TOKEN"
      project_id = data.google_project.this.number
      secret     = var.api_token_secret
      version    = "latest"
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = each.value
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.handler.email
    event_filters {
      attribute = "bucket"
      value     = var.bucket
    }
  }

  depends_on = [
    google_project_iam_member.gcs_pubsub_publisher,
    google_project_iam_member.event_receiver,
    google_secret_manager_secret_iam_member.token_reader,
  ]
}

resource "google_cloud_run_service_iam_member" "invoker" {
  for_each = google_cloudfunctions2_function.handler

  project  = var.project
  location = var.region
  service  = each.value.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.handler.email}"
}

output "functions" {
  value = { for k, f in google_cloudfunctions2_function.handler : k => f.name }
}
