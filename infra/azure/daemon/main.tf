# syncd run on Azure: Event Grid delivers a storage account's BlobCreated/BlobDeleted events to
# a Storage Queue the daemon reads ([queues.NAME] type = "azure-queue"), with retries and
# dead-lettering; the daemon's identity may process queue messages and read blobs, nothing else.

terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.90"
    }
  }
}

provider "azurerm" {
  features {}
}

variable "resource_group" {
  type        = string
  description = "Resource group of the data storage account"
}

variable "location" {
  type        = string
  description = "Azure region of the storage account"
}

variable "data_storage_account_id" {
  type        = string
  description = "Resource id of the storage account whose blob events feed the daemon"
}

variable "data_storage_account_name" {
  type        = string
  description = "Name of that storage account (the queue lives in it)"
}

variable "container" {
  type        = string
  description = "Blob container whose events are delivered"
}

variable "queue" {
  type        = string
  default     = "syncd-blob-events"
  description = "The queue the daemon reads; <queue>-poison holds messages it could not parse"
}

variable "dead_letter_container" {
  type        = string
  default     = "syncd-dead-letters"
  description = "Container (in the same account) for events Event Grid could not deliver"
}

variable "daemon_principal_id" {
  type        = string
  description = "Object id of the managed identity or service principal syncd run uses"
}

resource "azurerm_storage_queue" "events" {
  name                 = var.queue
  storage_account_name = var.data_storage_account_name
}

resource "azurerm_storage_queue" "poison" {
  name                 = "${var.queue}-poison"
  storage_account_name = var.data_storage_account_name
}

resource "azurerm_storage_container" "dead_letters" {
  #checkov:skip=CKV2_AZURE_21:Read logging is a property of the data storage account, which this module does not own; enable it there
  name                  = var.dead_letter_container
  storage_account_name  = var.data_storage_account_name
  container_access_type = "private"
}

resource "azurerm_eventgrid_system_topic" "storage" {
  name                   = "syncd-daemon-storage-events"
  resource_group_name    = var.resource_group
  location               = var.location
  source_arm_resource_id = var.data_storage_account_id
  topic_type             = "Microsoft.Storage.StorageAccounts"
}

resource "azurerm_eventgrid_system_topic_event_subscription" "to_queue" {
  name                = "syncd-daemon-blob-events"
  system_topic        = azurerm_eventgrid_system_topic.storage.name
  resource_group_name = var.resource_group
  included_event_types = [
    "Microsoft.Storage.BlobCreated",
    "Microsoft.Storage.BlobDeleted",
  ]
  subject_filter {
    subject_begins_with = "/blobServices/default/containers/${var.container}/"
  }
  storage_queue_endpoint {
    storage_account_id                    = var.data_storage_account_id
    queue_name                            = azurerm_storage_queue.events.name
    queue_message_time_to_live_in_seconds = 604800
  }
  retry_policy {
    max_delivery_attempts = 30
    event_time_to_live    = 1440
  }
  storage_blob_dead_letter_destination {
    storage_account_id          = var.data_storage_account_id
    storage_blob_container_name = azurerm_storage_container.dead_letters.name
  }
}

# each role on the one queue or container it is for, not the whole account (SECURITY.md)
locals {
  queues_id    = "${var.data_storage_account_id}/queueServices/default/queues"
  container_id = "${var.data_storage_account_id}/blobServices/default/containers/${var.container}"
}

# receive and delete the events queue's messages
resource "azurerm_role_assignment" "daemon_queue" {
  scope                = "${local.queues_id}/${azurerm_storage_queue.events.name}"
  role_definition_name = "Storage Queue Data Message Processor"
  principal_id         = var.daemon_principal_id
}

# move an unparseable message to <queue>-poison
resource "azurerm_role_assignment" "daemon_poison" {
  scope                = "${local.queues_id}/${azurerm_storage_queue.poison.name}"
  role_definition_name = "Storage Queue Data Message Sender"
  principal_id         = var.daemon_principal_id
}

# list and read blobs (a HEAD completes events without a size); no write, no delete
resource "azurerm_role_assignment" "daemon_blobs" {
  scope                = local.container_id
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = var.daemon_principal_id
}

output "queue" {
  description = "queue = ... of [queues.NAME] type = \"azure-queue\" in syncd.toml"
  value       = azurerm_storage_queue.events.name
}
