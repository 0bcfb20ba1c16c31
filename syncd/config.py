"""The ``syncd.toml`` configuration file: integrations, drivers, datasets, and the daemon's
settings (``[daemon]``, ``[queues.NAME]``, ``[server]``) and the change feed's consumers
(``[webhooks.NAME]``, ``[sinks.NAME]``).

Example::

    [integrations.aws-prod]
    type = "s3"
    access_key_id = "env:AWS_PROD_KEY_ID"          # secrets are references, never values
    secret_access_key = "file:/run/secrets/aws-prod"

    [drivers.images]
    type = "s3"
    bucket = "acme-images"
    path = "raw/"
    region = "eu-west-1"
    integration = "aws-prod"                       # omit to use the standard credential chain

    [datasets.birds]
    driver = "images"
    include = ["*.jpg", "*.png"]
    exclude = ["tmp/*"]
    max_size = "100MB"                             # or a number of bytes
    max_delete = "25%"                             # or a number of items
    interval = 600                                 # daemon: seconds between syncs
    watch = true                                   # daemon: apply queue events to it
    metadata = "listing"                           # or "head": HEAD new/changed objects
    tags = false                                   # record S3 object tags / Azure index tags

    [daemon]
    interval = 3600
    lease_ttl = 60                                 # seconds; a dead worker's datasets move on

    [queues.images-events]
    type = "sqs"
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/images-events"
    integration = "aws-prod"

    [server]
    host = "127.0.0.1"
    port = 8080

    [webhooks.search-index]                        # the change feed, POSTed and signed
    url = "https://indexer.internal/syncd"
    secret = "env:SEARCH_WEBHOOK_SECRET"           # whsec_... (Standard Webhooks)
    datasets = ["birds"]                           # optional filters
    kinds = ["created", "deleted"]
    headers = { Authorization = "env:INDEXER_AUTH" }
    batch = 100                                    # changes per request
    timeout = 10                                   # seconds per request
    fail_after = 300                               # seconds of failure until "failing"

    [sinks.to-indexer]                             # the change feed as queue messages
    type = "sqs"                                   # or sns (topic_arn), azure-queue (queue,
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/changes"  # account), pubsub (topic)
    integration = "aws-prod"
    kinds = ["created", "deleted"]                 # optional filters, as for webhooks

    [changes]
    retention = 604800                             # seconds the change log keeps a change

    [tokens.dashboard]                             # more API tokens, each with a scope
    token = "env:SYNCD_DASHBOARD_TOKEN"            # read, write or admin
    scope = "read"

The whole file is checked against the pydantic models below before anything is used: wrong
types, out-of-range values, unknown keys and sections (a typo must not silently change what is
synced), references to undeclared integrations or drivers, and a file without datasets are
all errors. A fault becomes one ``UsageError`` line naming the file, the key's location and
why, e.g. ``config 'syncd.toml': drivers.images.page_size: must be at least 1 (got 0)``.
Literal secrets are refused by :class:`providers.config.Integration`.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from providers.config import (
    INT_FIELDS,
    PLAIN_FIELDS,
    PROVIDERS,
    SECRET_FIELDS,
    ConfigError,
    DriverConfig,
    Integration,
)
from syncd.errors import UsageError
from syncd.limits import MaxDelete, parse_max_delete
from syncd.reconcile.filters import Filters
from syncd.reconcile.metadata import MetadataMode
from syncd.units import parse_size

#: environment variable naming the config file when ``--config`` is not given
CONFIG_ENV = "SYNCD_CONFIG"
#: the config file looked for in the working directory after ``$SYNCD_CONFIG``
DEFAULT_CONFIG = "syncd.toml"
#: seconds between two daemon syncs of a dataset, unless ``[daemon]`` or the dataset says
DEFAULT_INTERVAL = 3600
#: seconds a worker's dataset lease lives without renewal (``[daemon] lease_ttl``)
DEFAULT_LEASE_TTL = 60
#: seconds the change log keeps a change (``[changes] retention``), unless a webhook still
#: needs it
DEFAULT_RETENTION = 7 * 24 * 3600
#: the integration type a queue of each type authenticates with
QUEUE_PROVIDER = {"sqs": "s3", "azure-queue": "azure", "pubsub": "gcs"}
#: the integration type a sink of each type authenticates with
SINK_PROVIDER = {"sqs": "s3", "sns": "s3", "azure-queue": "azure", "pubsub": "gcs"}
#: a sink's default changes per message, by type: small enough that a batch of changes with
#: long keys stays under the service's message size limit (SQS and SNS 256 KiB; an Azure
#: Queue message 64 KiB after base64, so 48 KiB of JSON; Pub/Sub 10 MB)
SINK_BATCH = {"sqs": 100, "sns": 100, "azure-queue": 20, "pubsub": 100}


# -- the parsed configuration -------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the file declares it.

    ``max_delete`` is None when the file sets no limit. ``interval`` is the effective number of
    seconds between daemon syncs (the dataset's own ``interval``, else ``[daemon] interval``);
    ``watch`` says whether the daemon applies queue events to it.
    """

    name: str
    driver: DriverConfig
    filters: Filters
    max_delete: MaxDelete | None = None
    interval: int = DEFAULT_INTERVAL
    watch: bool = True
    #: key ranges listed at once (see syncd.reconcile.partition); 1 lists serially
    list_concurrency: int = 1
    #: key ranges a run is split into, each leased on its own (syncd.reconcile.split); None:
    #: automatic (one per 50,000 items, at most 32), 1: never split
    ranges: int | None = None
    #: what items record of the provider's metadata: "listing" or "head"
    #: (:mod:`syncd.reconcile.metadata`)
    metadata: MetadataMode = "listing"
    #: record the objects' tags (S3 object tags, Azure blob index tags)
    tags: bool = False


@dataclass(frozen=True)
class DaemonSettings:
    """The ``[daemon]`` table. ``lease_ttl``: seconds a dataset lease (and a worker's
    registration) lives without renewal: how soon another worker takes over from a dead one."""

    interval: int = DEFAULT_INTERVAL
    lease_ttl: int = DEFAULT_LEASE_TTL


@dataclass(frozen=True)
class QueueConfig:
    """One ``[queues.NAME]`` table. Exactly the fields of its ``type`` can be set:

    * ``sqs``: ``url`` (the queue URL);
    * ``azure-queue``: ``queue`` (the queue name) and optionally ``account`` (else from the
      integration's connection string or the environment, as for Azure drivers) and
      ``visibility_timeout`` (seconds a received message stays hidden: an unacknowledged
      message comes back after it);
    * ``pubsub``: ``subscription``.

    ``integration`` is the credential set to read the queue with (its type is ``s3``, ``azure``
    or ``gcs`` respectively), or None for the provider's standard chain.
    """

    name: str
    type: Literal["sqs", "azure-queue", "pubsub"]
    url: str | None = None
    queue: str | None = None
    account: str | None = None
    subscription: str | None = None
    integration: Integration | None = None
    visibility_timeout: int | None = None


@dataclass(frozen=True)
class ServerConfig:
    """The ``[server]`` table: where ``syncd serve`` / the daemon listen."""

    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[webhooks.NAME]`` table: the change feed POSTed to ``url`` (see
    :mod:`syncd.feed.webhooks`). ``secret`` and header values that are ``env:``/``file:``
    references are read only when the daemon starts (:meth:`resolve`)."""

    name: str
    url: str
    #: a reference to the Standard Webhooks secret (``whsec_...``), never the value
    secret: str
    #: only changes of these datasets (names) / kinds; empty: all
    datasets: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    #: extra request headers; a value may be an ``env:``/``file:`` reference
    headers: tuple[tuple[str, str], ...] = ()
    batch: int = 100
    timeout: float = 10.0
    fail_after: int = 300

    def resolve(self) -> tuple[str, dict[str, str]]:
        """The secret and the headers with their references read; every value is registered
        with the redactor (a plain header value too: it may be a token). ``ConfigError`` if a
        reference cannot be read."""
        from providers.config import resolve_secret
        from providers.redact import register

        secret = resolve_secret(self.secret, what=f"webhook {self.name!r} secret")
        register(secret.removeprefix("whsec_"))
        headers = {}
        for key, value in self.headers:
            if value.startswith(("env:", "file:")):
                value = resolve_secret(value, what=f"webhook {self.name!r} header {key!r}")
            register(value)
            headers[key] = value
        return secret, headers


@dataclass(frozen=True)
class SinkConfig:
    """One ``[sinks.NAME]`` table: the change feed sent as messages to a cloud queue or topic
    (see :mod:`syncd.feed.sinks`). Exactly the fields of its ``type`` are set:

    * ``sqs``: ``url`` (the queue URL); ``sns``: ``topic_arn``;
    * ``azure-queue``: ``queue`` and optionally ``account`` (else from the integration's
      connection string or the environment, as for queues);
    * ``pubsub``: ``topic`` (``projects/P/topics/T``).

    ``integration`` is the credential set to send with (``s3`` for SQS and SNS, ``azure``,
    ``gcs``), or None for the provider's standard chain; it is read when the daemon starts."""

    name: str
    type: Literal["sqs", "sns", "azure-queue", "pubsub"]
    url: str | None = None
    topic_arn: str | None = None
    queue: str | None = None
    account: str | None = None
    topic: str | None = None
    integration: Integration | None = None
    #: only changes of these datasets (names) / kinds; empty: all
    datasets: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    #: changes per message (default :data:`SINK_BATCH` of the type)
    batch: int = 100
    #: seconds one sending may take before it counts as failed (and is tried again)
    timeout: float = 10.0
    fail_after: int = 300

    @property
    def target(self) -> str:
        """Where the sink sends, as ``sinks ls`` shows it (no credentials: an SQS URL, a
        topic ARN or name, a queue name hold none)."""
        if self.type == "azure-queue":
            return f"{self.account}/{self.queue}" if self.account else str(self.queue)
        return str(self.url or self.topic_arn or self.topic)


@dataclass(frozen=True)
class TokenConfig:
    """One ``[tokens.NAME]``: a bearer token of the HTTP API (``token``, a reference read when
    the daemon starts) with its ``scope``: ``read`` (datasets, items, runs, changes),
    ``write`` (read, and syncs, events and item metadata edits), ``admin`` (write, and creating,
    changing and removing datasets and integrations). ``SYNCD_API_TOKEN`` is ``admin``."""

    name: str
    token: str
    scope: str

    def resolve(self) -> str:
        """The token's value (registered with the redactor); ``ConfigError`` if the reference
        cannot be read."""
        from providers.config import resolve_secret

        return resolve_secret(self.token, what=f"tokens.{self.name}.token")


@dataclass(frozen=True)
class DaemonConfig:
    """Everything a config file declares, as :func:`load_daemon_config` returns it."""

    datasets: dict[str, DatasetSpec]
    daemon: DaemonSettings = DaemonSettings()
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    #: None when the file has no ``[server]`` table: the daemon then serves no HTTP API
    server: ServerConfig | None = None
    #: ``[catalog] url``: the catalog to use when neither ``--db`` nor ``$SYNCD_DB`` names one
    catalog_url: str | None = None
    webhooks: dict[str, WebhookConfig] = field(default_factory=dict)
    sinks: dict[str, SinkConfig] = field(default_factory=dict)
    #: ``[changes] retention``: seconds the change log keeps a change
    retention: int = DEFAULT_RETENTION
    #: ``[tokens.NAME]``: API tokens with a scope, besides ``SYNCD_API_TOKEN`` (admin)
    tokens: dict[str, TokenConfig] = field(default_factory=dict)


# -- the schema -----------------------------------------------------------------------------
#
# TOML values arrive typed (str, int, float, bool, list, dict, datetime), so every model is
# strict: ``page_size = "10"`` or ``allow_external_delete = "yes"`` is an error, not a guess.


class _Table(BaseModel):
    """A TOML table: unknown keys are errors, values must already have the right type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


ProviderType = Literal["s3", "gcs", "azure", "local"]  # == providers.config.PROVIDERS


def _integration_model(kind: str) -> type[_Table]:
    """The table of one integration type; its fields come from ``providers.config``."""
    allowed = sorted(SECRET_FIELDS[kind] | PLAIN_FIELDS[kind])
    # a duration may be written as a TOML number; every other field is text
    fields: dict[str, Any] = {
        name: ((StrictStr | StrictInt | None) if name in INT_FIELDS else (StrictStr | None), None)
        for name in allowed
    }
    return create_model(
        f"{kind.capitalize()}IntegrationTable",
        __base__=_Table,
        type=(Literal[kind], ...),
        **fields,
    )


#: one table per integration type, told apart by ``type``
IntegrationTable = Annotated[
    functools.reduce(operator.or_, (_integration_model(kind) for kind in PROVIDERS)),
    Field(discriminator="type"),
]


#: validates one integration table on its own (an API request's)
_INTEGRATION: TypeAdapter[Any] = TypeAdapter(IntegrationTable)


class DriverTable(_Table):
    type: ProviderType
    bucket: str = Field(min_length=1)
    path: str = ""
    region: str | None = None
    endpoint: str | None = None
    storage_class: str | None = None
    account: str | None = None
    allow_external_delete: bool = False
    integration: str | None = None
    #: s3: list object versions, so items record each object's VersionId
    versioned: bool = False
    # the smallest maximum page size of the providers (S3 and GCS 1000; Azure takes 5000)
    page_size: int = Field(1000, ge=1, le=1000)


def _size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must not be negative (got {value})")
        return value
    if isinstance(value, str):
        return parse_size(value)
    raise ValueError(f'must be a number of bytes or a size like "10MB" (got {_toml_type(value)})')


def _max_delete(value: object) -> MaxDelete:
    if isinstance(value, int) and not isinstance(value, bool):
        return MaxDelete(count=value)
    if isinstance(value, str):
        return parse_max_delete(value)
    raise ValueError(
        f'must be a number of items or a percentage like "25%" (got {_toml_type(value)})'
    )


Size = Annotated[int, PlainValidator(_size)]
MaxDeleteValue = Annotated[MaxDelete, PlainValidator(_max_delete)]
#: a year: an interval beyond it is a typo (``1000000000000`` would never sync again)
MAX_INTERVAL = 365 * 24 * 3600
Seconds = Annotated[int, Field(gt=0, le=MAX_INTERVAL)]


def _dataset_name(name: str) -> str:
    from syncd.store.catalog import check_dataset_name

    try:
        check_dataset_name(name)
    except UsageError as exc:
        raise ValueError(str(exc).split("; ")[0]) from None
    return name


DatasetName = Annotated[str, AfterValidator(_dataset_name)]


class DatasetSettingsTable(_Table):
    """The settings a dataset has whether a config declares it or the HTTP API creates it
    (:class:`DatasetRequest`): filters, delete limit, interval, watch, what items record of
    the provider's metadata and tags."""

    include: list[str] = []
    exclude: list[str] = []
    max_size: Size | None = None
    max_delete: MaxDeleteValue | None = None
    interval: Seconds | None = None
    watch: bool = True
    metadata: MetadataMode = "listing"
    tags: bool = False


class DatasetTable(DatasetSettingsTable):
    driver: str
    list_concurrency: Annotated[int, Field(ge=1, le=256)] = 1
    ranges: Annotated[int, Field(ge=1, le=256)] | None = None


class DatasetRequest(DatasetSettingsTable):
    """The body of ``POST /api/v1/datasets``: a name, where its objects are (``source``, a
    bucket URI like ``s3://bucket/prefix/``, or ``driver``, a table like a config's
    ``[drivers.NAME]``), optionally the ``integration`` (by name, one the catalog holds) to
    read it with, and the settings a config's ``[datasets.NAME]`` takes."""

    name: DatasetName
    source: Annotated[str, Field(min_length=1)] | None = None
    driver: DriverTable | None = None
    integration: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_location(self) -> DatasetRequest:
        if (self.source is None) == (self.driver is None):
            raise ValueError("give exactly one of source (a bucket URI) and driver (a table)")
        if self.driver is not None and self.driver.integration and self.integration:
            raise ValueError("give the integration once: in driver or beside it, not both")
        return self


class DatasetPatch(_Table):
    """The body of ``PATCH /api/v1/datasets/{name}``: any of these; ``null`` clears
    ``max_size``, ``max_delete`` and ``interval``. ``source`` may only repeat the dataset's own
    (a dataset does not move, as on the CLI)."""

    source: Annotated[str, Field(min_length=1)] | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    max_size: Size | None = None
    max_delete: MaxDeleteValue | None = None
    interval: Seconds | None = None
    watch: bool | None = None
    metadata: MetadataMode | None = None
    tags: bool | None = None


def integration_request(raw: Any) -> Integration:
    """The integration a ``POST /api/v1/integrations`` body declares: ``{"name": ..., "type":
    ..., fields}`` with the fields of a config's ``[integrations.NAME]``; a literal secret is
    refused as in the config. ``UsageError`` (one line) for a body that is not one."""
    if not isinstance(raw, dict):
        raise UsageError("the request body must be a JSON object with name, type and fields")
    body = dict(raw)
    name = body.pop("name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise UsageError(
            "name: must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    try:
        table = _INTEGRATION.validate_python(body)
        return Integration(name, table.type, table.model_dump(exclude={"type"}, exclude_none=True))
    except ValidationError as exc:
        raise UsageError(describe_errors(exc, body, whole_file=False)) from None
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


class DaemonTable(_Table):
    interval: Seconds = DEFAULT_INTERVAL
    lease_ttl: Annotated[int, Field(ge=2, le=86400)] = DEFAULT_LEASE_TTL


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://\S+", value):
        raise ValueError(
            f"must be the queue's URL, like https://sqs.REGION.amazonaws.com/... (got {value!r})"
        )
    return value


class SqsQueueTable(_Table):
    type: Literal["sqs"]
    url: Annotated[str, AfterValidator(_http_url)]
    integration: str | None = None


class AzureQueueTable(_Table):
    type: Literal["azure-queue"]
    queue: str = Field(min_length=1)
    account: str | None = Field(None, min_length=1)
    integration: str | None = None
    # Storage Queues hide a received message for a time the receiver chooses (SQS keeps it
    # on the queue, Pub/Sub on the subscription); at most 7 days
    visibility_timeout: int = Field(30, ge=1, le=7 * 24 * 3600)


class PubsubQueueTable(_Table):
    type: Literal["pubsub"]
    subscription: str = Field(min_length=1)
    integration: str | None = None


QueueTable = Annotated[
    SqsQueueTable | AzureQueueTable | PubsubQueueTable, Field(discriminator="type")
]


class ServerTable(_Table):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=1, le=65535)


def _catalog_url(value: str) -> str:
    if "://" in value and not value.startswith(("postgresql://", "postgres://", "sqlite://")):
        raise ValueError(
            "must be postgresql://[user@]host[:port]/dbname, sqlite:///path or a file path"
            f" (got {value.split('://')[0]}://...)"
        )
    if urlsplit(value).password is not None:
        # a config file is shared and committed: no secret in it, as for integrations
        raise ValueError(
            "must not hold a password: put it in PGPASSWORD or ~/.pgpass (libpq reads both)"
        )
    return value


class CatalogTable(_Table):
    url: Annotated[str, Field(min_length=1), AfterValidator(_catalog_url)]


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        raise ValueError(f"must be an http:// or https:// URL (got {value.split('://')[0]}://...)")
    if parts.password is not None:
        # a config file is shared and committed: credentials go in headers, as references
        raise ValueError(
            'must not hold a password: send credentials as headers = { Authorization = "env:..." }'
        )
    return value


def _reference(value: str) -> str:
    scheme, sep, target = value.partition(":")
    if not sep or scheme not in ("env", "file") or not target:
        raise ValueError(
            "holds a literal secret; write 'env:VARIABLE' or 'file:/path/to/secret' instead"
        )
    return value


def _header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError("must be an HTTP header name (letters, digits and -)")
    if value.lower().startswith("webhook-") or value.lower() in ("content-type", "content-length"):
        raise ValueError("is set by syncd itself (the Standard Webhooks headers, the body's type)")
    return value


ChangeKind = Literal["created", "updated", "deleted", "dataset_removed"]


class WebhookTable(_Table):
    url: Annotated[str, AfterValidator(_webhook_url)]
    secret: Annotated[str, AfterValidator(_reference)]
    datasets: list[str] = []
    kinds: list[ChangeKind] = []
    headers: dict[Annotated[str, AfterValidator(_header_name)], str] = {}
    batch: int = Field(100, ge=1, le=1000)
    timeout: float = Field(10, gt=0, le=300)
    fail_after: int = Field(300, ge=1, le=MAX_INTERVAL)


def _topic_arn(value: str) -> str:
    if not re.fullmatch(
        r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?", value
    ):
        raise ValueError(
            f"must be the topic's ARN, like arn:aws:sns:REGION:ACCOUNT:TOPIC (got {value[:80]!r})"
        )
    return value


def _pubsub_topic(value: str) -> str:
    if not re.fullmatch(r"projects/[^/\s]+/topics/[^/\s]+", value):
        raise ValueError(f"must be projects/PROJECT/topics/TOPIC (got {value[:80]!r})")
    return value


class _SinkTable(_Table):
    integration: str | None = None
    datasets: list[str] = []
    kinds: list[ChangeKind] = []
    # the default is the type's (SINK_BATCH); a batch still over the message size limit
    # pauses the sink, with an error naming batch
    batch: int | None = Field(None, ge=1, le=1000)
    timeout: float = Field(10, gt=0, le=300)
    fail_after: int = Field(300, ge=1, le=MAX_INTERVAL)


class SqsSinkTable(_SinkTable):
    type: Literal["sqs"]
    url: Annotated[str, AfterValidator(_http_url)]


class SnsSinkTable(_SinkTable):
    type: Literal["sns"]
    topic_arn: Annotated[str, AfterValidator(_topic_arn)]


class AzureQueueSinkTable(_SinkTable):
    type: Literal["azure-queue"]
    queue: str = Field(min_length=1)
    account: str | None = Field(None, min_length=1)


class PubsubSinkTable(_SinkTable):
    type: Literal["pubsub"]
    topic: Annotated[str, AfterValidator(_pubsub_topic)]


SinkTable = Annotated[
    SqsSinkTable | SnsSinkTable | AzureQueueSinkTable | PubsubSinkTable,
    Field(discriminator="type"),
]


TokenScope = Literal["read", "write", "admin"]


class TokenTable(_Table):
    """One ``[tokens.NAME]``: an API bearer token, by reference, and what it may do."""

    token: Annotated[str, AfterValidator(_reference)]
    scope: TokenScope


class ChangesTable(_Table):
    retention: int = Field(DEFAULT_RETENTION, ge=60, le=10 * MAX_INTERVAL)


class FileTable(_Table):
    """The whole file. Cross-references are checked once every table is well-typed."""

    integrations: dict[str, IntegrationTable] = {}
    drivers: dict[str, DriverTable] = {}
    datasets: dict[DatasetName, DatasetTable] = {}
    daemon: DaemonTable = Field(default_factory=DaemonTable)
    queues: dict[str, QueueTable] = {}
    server: ServerTable = Field(default_factory=ServerTable)
    catalog: CatalogTable | None = None
    webhooks: dict[str, WebhookTable] = {}
    sinks: dict[str, SinkTable] = {}
    changes: ChangesTable = Field(default_factory=ChangesTable)
    tokens: dict[str, TokenTable] = {}

    @model_validator(mode="after")
    def _references(self) -> FileTable:
        problems: list[str] = []
        if not self.datasets and "server" not in self.model_fields_set:
            # a daemon with an API may start empty: datasets are then created over the API
            problems.append("declares no [datasets.NAME] (nor a [server] to create them over)")

        def check(
            loc: tuple[str | int, ...], what: str, name: str, declared: dict[str, Any]
        ) -> bool:
            if name in declared:
                return True
            known = ", ".join(sorted(declared)) or "none"
            problems.append(f"{_render(loc)}: unknown {what} {name!r} (declared: {known})")
            return False

        def check_integration(loc: tuple[str, ...], name: str | None, kind: str) -> None:
            if name is None or not check(loc, "integration", name, self.integrations):
                return
            actual = self.integrations[name].type  # type: ignore[attr-defined]
            if actual != kind:
                problems.append(
                    f"{_render(loc)}: integration {name!r} is of type {actual}, not {kind}"
                )

        for name, driver in self.drivers.items():
            check_integration(("drivers", name, "integration"), driver.integration, driver.type)
        for name, dataset in self.datasets.items():
            check(("datasets", name, "driver"), "driver", dataset.driver, self.drivers)
        for name, queue in self.queues.items():
            loc = ("queues", name, "integration")
            check_integration(loc, queue.integration, QUEUE_PROVIDER[queue.type])
        for name, hook in self.webhooks.items():
            for i, dataset in enumerate(hook.datasets):
                check(("webhooks", name, "datasets", i), "dataset", dataset, self.datasets)
        for name, sink in self.sinks.items():
            check_integration(("sinks", name, "integration"), sink.integration,
                              SINK_PROVIDER[sink.type])  # fmt: skip
            for i, dataset in enumerate(sink.datasets):
                check(("sinks", name, "datasets", i), "dataset", dataset, self.datasets)
            if name in self.webhooks:
                # one delivery record per name (its cursor): the two would share it
                problems.append(
                    f"{_render(('sinks', name))}: a webhook has this name too; rename one"
                )
        if problems:
            raise ValueError(_first(problems))
        return self


# -- one line per fault ---------------------------------------------------------------------

#: what a type error's key must be, by pydantic error type
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _first(problems: list[str]) -> str:
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def _toml_type(value: object) -> str:
    """The TOML name of a value's type. Type errors name this, never the value itself, which
    could be a secret written under the wrong key."""
    for kind, name in (
        (bool, "a boolean"),  # before int: bool is an int
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        ((datetime, date, time), "a date/time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _render(loc: tuple[str | int, ...]) -> str:
    """``("datasets", "a.b", "include", 1)`` -> ``datasets."a.b".include[1]`` (TOML's dotted keys)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{key}" if out else key
    return out


def _file_location(loc: tuple[str | int, ...], raw: Any) -> tuple[str | int, ...]:
    """``loc`` without the parts that are not keys of the file.

    pydantic puts a tagged union's tag into the location (``queues.q.sqs.url`` for the ``url``
    of a queue of type ``sqs``); walking the file's own tables alongside drops those. The
    last part is kept as is: it names a missing key as well as a present one.
    """
    kept: list[str | int] = []
    node = raw
    for i, part in enumerate(loc):
        if part == "[key]":
            continue  # pydantic's marker of a dict key's own error: the key is already named
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            if i < len(loc) - 1:
                continue
            node = None
        kept.append(part)
    return tuple(kept)


def _why(error: Mapping[str, Any]) -> str:
    """Why the key is wrong, in the file's terms (TOML types, not Python's)."""
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    if kind in _EXPECTED:
        why = f"must be {_EXPECTED[kind]} (got {_toml_type(value)})"
        if kind == "list_type" and isinstance(value, str):
            why += f"; write [{json.dumps(value)}]"
        return why
    if kind in ("missing", "union_tag_not_found"):
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']} (got {value!r})"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']} (got {value!r})"
    if kind == "greater_than":
        return f"must be greater than {ctx['gt']} (got {value!r})"
    if kind == "literal_error":
        return f"must be {ctx['expected']} (got {value!r})"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx['expected_tags']} (got {value.get('type')!r})"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind == "value_error":
        return str(ctx["error"])
    return error["msg"]


def describe_errors(exc: ValidationError, raw: Any, *, whole_file: bool = True) -> str:
    """One line for a validation of ``raw`` (the parsed file; with ``whole_file`` False, one
    table, such as an API request's body): the first fault as ``LOCATION: why`` (or just
    ``why`` for a fault of the whole), then ``(+N more)``."""
    problems = []
    for error in exc.errors(include_url=False):
        kind = error["type"]
        loc = _file_location(error["loc"], raw)
        if kind.startswith("union_tag_"):
            loc = (*loc, "type")  # the table's type is what is missing or wrong
        why = _why(error)
        if kind == "extra_forbidden" and len(loc) == 1 and whole_file:
            why = f"unknown section (expected {', '.join(FileTable.model_fields)})"
        problems.append(f"{_render(loc)}: {why}" if loc else why)
    return _first(problems)


# -- loading ----------------------------------------------------------------------------------


def _build(table: FileTable) -> DaemonConfig:
    """The dataclasses for a validated file. ``ConfigError`` from the providers' own checks
    (a literal secret in a secret field)."""
    integrations = {
        name: Integration(name, t.type, t.model_dump(exclude={"type"}, exclude_none=True))
        for name, t in table.integrations.items()
    }
    drivers = {
        name: DriverConfig(
            **t.model_dump(exclude={"integration"}),
            integration=integrations[t.integration] if t.integration else None,
            name=name,
        )
        for name, t in table.drivers.items()
    }
    interval = table.daemon.interval
    datasets = {
        name: DatasetSpec(
            name,
            drivers[t.driver],
            Filters(tuple(t.include), tuple(t.exclude), t.max_size),
            max_delete=t.max_delete,
            interval=t.interval or interval,
            watch=t.watch,
            list_concurrency=t.list_concurrency,
            ranges=t.ranges,
            metadata=t.metadata,
            tags=t.tags,
        )
        for name, t in table.datasets.items()
    }
    queues = {
        name: QueueConfig(
            name=name,
            **t.model_dump(exclude={"integration"}),
            integration=integrations[t.integration] if t.integration else None,
        )
        for name, t in table.queues.items()
    }
    return DaemonConfig(
        datasets=datasets,
        daemon=DaemonSettings(interval=interval, lease_ttl=table.daemon.lease_ttl),
        queues=queues,
        server=ServerConfig(host=table.server.host, port=table.server.port)
        if "server" in table.model_fields_set
        else None,
        catalog_url=table.catalog.url if table.catalog else None,
        webhooks={
            name: WebhookConfig(
                name=name,
                url=t.url,
                secret=t.secret,
                datasets=tuple(t.datasets),
                kinds=tuple(t.kinds),
                headers=tuple(t.headers.items()),
                batch=t.batch,
                timeout=float(t.timeout),
                fail_after=t.fail_after,
            )
            for name, t in table.webhooks.items()
        },
        sinks={
            name: SinkConfig(
                name=name,
                **t.model_dump(exclude={"integration", "datasets", "kinds", "batch", "timeout"}),
                integration=integrations[t.integration] if t.integration else None,
                datasets=tuple(t.datasets),
                kinds=tuple(t.kinds),
                batch=t.batch or SINK_BATCH[t.type],
                timeout=float(t.timeout),
            )
            for name, t in table.sinks.items()
        },
        retention=table.changes.retention,
        tokens={
            name: TokenConfig(name=name, token=t.token, scope=t.scope)
            for name, t in table.tokens.items()
        },
    )


def load_daemon_config(path: str) -> DaemonConfig:
    """Read, validate and parse the file at ``path``: datasets, daemon, queues and server.

    Raises ``UsageError`` (one line naming the file) if it cannot be read, is not TOML, or
    does not match the schema; nothing is resolved or opened (secrets are read later).
    """
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read config {path!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config {path!r} is not valid TOML: {exc}") from None
    try:
        return _build(FileTable.model_validate(raw))
    except ValidationError as exc:
        raise UsageError(f"config {path!r}: {describe_errors(exc, raw)}") from None
    except ConfigError as exc:
        raise UsageError(f"config {path!r}: {exc}") from None


def load_config(path: str) -> dict[str, DatasetSpec]:
    """The datasets the file at ``path`` declares, by name (at least one), after validating the
    whole file as :func:`load_daemon_config` does. ``UsageError`` on any fault."""
    return load_daemon_config(path).datasets


def find_config(explicit: str | None) -> str | None:
    """The config file ``syncd sync`` reads when it is given no SOURCE.

    ``explicit`` (``--config``) if given, unchecked (loading it reports a missing file); else
    ``$SYNCD_CONFIG`` if set and not empty, which must name an existing file (``UsageError``
    otherwise: a setting that points nowhere is a mistake, not a request for no config); else
    ``syncd.toml`` if the working directory has one; else None.
    """
    if explicit:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        if not Path(from_env).is_file():
            raise UsageError(f"{CONFIG_ENV}={from_env!r}: no such config file")
        return from_env
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None
