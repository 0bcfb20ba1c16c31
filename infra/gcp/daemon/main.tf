# syncd run on GCP: the bucket's notifications to a Pub/Sub topic, a pull subscription for the
# daemon (with a dead-letter topic), an optional push subscription to the daemon's API, and a
# service account that may read the subscription and the bucket and nothing else.
#
# Pub/Sub push can only authenticate with an OIDC token, not the API's bearer token: a push
# endpoint must sit behind a proxy that checks the OIDC token and adds the bearer token (or
# use the pull subscription, which needs no public endpoint).

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
  description = "Project of the bucket and the topic"
}

variable "bucket" {
  type        = string
  description = "The bucket whose notifications feed the daemon"
}

variable "name" {
  type        = string
  default     = "syncd-gcs-events"
  description = "Name of the topic and the subscriptions"
}

variable "push_endpoint" {
  type        = string
  default     = ""
  description = "https://HOST/api/v1/events of a daemon behind an OIDC-checking proxy; empty: no push subscription"
}

variable "kms_key" {
  type        = string
  default     = null
  description = "Optional Cloud KMS key for the topics (else Google-managed encryption)"
}

provider "google" {
  project = var.project
}

data "google_storage_project_service_account" "gcs" {}

resource "google_pubsub_topic" "events" {
  name         = var.name
  kms_key_name = var.kms_key
}

resource "google_pubsub_topic" "dead_letter" {
  name         = "${var.name}-dead-letter"
  kms_key_name = var.kms_key
}

# the GCS service agent publishes the bucket's notifications
resource "google_pubsub_topic_iam_member" "gcs_publishes" {
  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "events" {
  bucket         = var.bucket
  topic          = google_pubsub_topic.events.id
  payload_format = "JSON_API_V1"
  event_types    = ["OBJECT_FINALIZE", "OBJECT_DELETE"]
  depends_on     = [google_pubsub_topic_iam_member.gcs_publishes]
}

resource "google_service_account" "daemon" {
  account_id   = "syncd-daemon"
  display_name = "syncd run"
}

resource "google_pubsub_subscription" "pull" {
  name                       = "${var.name}-pull"
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = 5
  }
}

resource "google_pubsub_subscription" "push" {
  count                = var.push_endpoint == "" ? 0 : 1
  name                 = "${var.name}-push"
  topic                = google_pubsub_topic.events.id
  ack_deadline_seconds = 60
  push_config {
    push_endpoint = var.push_endpoint
    oidc_token {
      service_account_email = google_service_account.daemon.email
    }
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = 5
  }
}

resource "google_pubsub_subscription_iam_member" "daemon_reads" {
  subscription = google_pubsub_subscription.pull.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.daemon.email}"
}

# list and read objects (a HEAD completes events without a size); no write, no delete
resource "google_storage_bucket_iam_member" "daemon_lists" {
  bucket = var.bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.daemon.email}"
}

output "subscription" {
  description = "subscription = ... of [queues.NAME] type = \"pubsub\" in syncd.toml"
  value       = google_pubsub_subscription.pull.id
}
