# syncd bucket-event handler on Azure: a Linux Function App (Python, Functions v4) running
# functions/azure/function_app.py, and an Event Grid subscription on the data storage account
# for BlobCreated/BlobDeleted under one container (and optional path), with retries and
# dead-lettering. The syncd API token is a Key Vault reference; the app reads it through its
# managed identity.
#
# Build the code with `python infra/package.py azure` (dist/azure.zip) and deploy it with
# `az functionapp deployment source config-zip`, or point var.package_url at it.

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
  description = "Existing resource group for the function app"
}

variable "location" {
  type        = string
  description = "Azure region"
}

variable "name" {
  type        = string
  default     = "syncd-events"
  description = "Name prefix of the created resources (lowercase letters and digits for storage)"
}

variable "data_storage_account_id" {
  type        = string
  description = "Resource id of the storage account whose blob events feed the dataset"
}

variable "container" {
  type        = string
  description = "Blob container whose events are delivered"
}

variable "path_prefix" {
  type        = string
  default     = ""
  description = "Only blobs under this path inside the container (e.g. raw/)"
}

variable "syncd_api_url" {
  type        = string
  description = "Base URL of the syncd API (syncd serve)"
}

variable "api_token_secret_uri" {
  type        = string
  description = "Key Vault secret URI of the syncd API token (not the token)"
}

variable "key_vault_id" {
  type        = string
  description = "Resource id of the Key Vault holding the token secret"
}

data "azurerm_resource_group" "this" {
  name = var.resource_group
}

# storage the Functions runtime itself needs (not the data account)
resource "azurerm_storage_account" "runtime" {
  #checkov:skip=CKV2_AZURE_1:Runtime storage holds only Functions bookkeeping; Microsoft-managed keys suffice, a customer key is the deployer's choice
  #checkov:skip=CKV2_AZURE_40:The Functions runtime (AzureWebJobsStorage) uses shared-key access on consumption plans
  #checkov:skip=CKV_AZURE_206:Runtime bookkeeping is rebuilt by the host; geo-replication is not needed
  #checkov:skip=CKV_AZURE_59:Consumption-plan Functions reach their runtime storage over the public endpoint
  #checkov:skip=CKV2_AZURE_33:A private endpoint needs a VNet-integrated (Premium) plan; this template uses the consumption plan
  #checkov:skip=CKV_AZURE_244:Shared-key access is required by the Functions runtime on the consumption plan (see CKV2_AZURE_40)
  name                            = replace("${var.name}rt", "-", "")
  resource_group_name             = data.azurerm_resource_group.this.name
  location                        = var.location
  account_tier                    = "Standard"
  account_replication_type        = "LRS"
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  # the Functions runtime authenticates to its own storage with the account key (see skips)
  shared_access_key_enabled = true

  sas_policy {
    expiration_period = "01.00:00:00"
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  queue_properties {
    logging {
      delete                = true
      read                  = true
      write                 = true
      version               = "1.0"
      retention_policy_days = 10
    }
  }
}

resource "azurerm_service_plan" "this" {
  #checkov:skip=CKV_AZURE_212:The consumption plan (Y1) scales out on demand; a minimum instance count does not apply
  #checkov:skip=CKV_AZURE_225:Zone redundancy is not available on the consumption plan
  name                = "${var.name}-plan"
  resource_group_name = data.azurerm_resource_group.this.name
  location            = var.location
  os_type             = "Linux"
  sku_name            = "Y1"
}

resource "azurerm_linux_function_app" "this" {
  #checkov:skip=CKV_AZURE_221:Event Grid delivers to the function over its public endpoint; the trigger authenticates with the Event Grid system key
  #checkov:skip=CKV_AZURE_56:App Service authentication would block Event Grid's system-key deliveries
  name                        = "${var.name}-func"
  resource_group_name         = data.azurerm_resource_group.this.name
  location                    = var.location
  service_plan_id             = azurerm_service_plan.this.id
  storage_account_name        = azurerm_storage_account.runtime.name
  storage_account_access_key  = azurerm_storage_account.runtime.primary_access_key
  https_only                  = true
  functions_extension_version = "~4"

  identity {
    type = "SystemAssigned"
  }

  site_config {
    ftps_state          = "Disabled"
    http2_enabled       = true
    minimum_tls_version = "1.2"
    application_stack {
      python_version = "3.12"
    }
  }

  app_settings = {
    SYNCD_API_URL   = var.syncd_api_url
    SYNCD_API_TOKEN = "@Microsoft.KeyVault(SecretUri=${var.api_token_secret_uri})"
    LOG_LEVEL       = "INFO"
  }
}

resource "azurerm_role_assignment" "token_reader" {
  scope                = var.key_vault_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_linux_function_app.this.identity[0].principal_id
}

resource "azurerm_eventgrid_system_topic" "blobs" {
  name                   = "${var.name}-blobs"
  resource_group_name    = data.azurerm_resource_group.this.name
  location               = var.location
  source_arm_resource_id = var.data_storage_account_id
  topic_type             = "Microsoft.Storage.StorageAccounts"
}

resource "azurerm_storage_container" "dead_letters" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging is configured on the runtime account's diagnostic settings, outside this module
  name                  = "syncd-dead-letters"
  storage_account_name  = azurerm_storage_account.runtime.name
  container_access_type = "private"
}

resource "azurerm_eventgrid_system_topic_event_subscription" "blobs" {
  name                = "${var.name}-blob-events"
  system_topic        = azurerm_eventgrid_system_topic.blobs.name
  resource_group_name = data.azurerm_resource_group.this.name

  included_event_types = [
    "Microsoft.Storage.BlobCreated",
    "Microsoft.Storage.BlobDeleted",
  ]

  subject_filter {
    subject_begins_with = "/blobServices/default/containers/${var.container}/blobs/${var.path_prefix}"
  }

  azure_function_endpoint {
    function_id                       = "${azurerm_linux_function_app.this.id}/functions/syncd_blob_events"
    max_events_per_batch              = 10
    preferred_batch_size_in_kilobytes = 64
  }

  retry_policy {
    max_delivery_attempts = 30
    event_time_to_live    = 1440
  }

  storage_blob_dead_letter_destination {
    storage_account_id          = azurerm_storage_account.runtime.id
    storage_blob_container_name = azurerm_storage_container.dead_letters.name
  }
}

output "function_app" {
  value = azurerm_linux_function_app.this.name
}
