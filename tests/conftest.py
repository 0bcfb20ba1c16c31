"""Session fixtures: the emulators, and one :class:`Backend` per provider for the shared suites.

With ``CI`` set, an emulator that cannot start fails the run; elsewhere its tests are skipped
with the reason (so a laptop without Node can still run the S3/GCS/local tests).

Hypothesis runs under the ``syncd`` profile: derandomized (the same examples every run, so a
result never depends on luck), no deadline (a loaded 2-core machine is slow, and speed is
measured in ``bench/``), no example database. ``HYPOTHESIS_PROFILE=explore`` draws fresh
random examples instead, to look for new failures by hand.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from providers.config import DriverConfig, Integration
from syncd.store.catalog import Catalog
from tests import emulators, pg
from tests.required import missing

# the dashboard's browser fixtures (web_browser, web_page): tests/web.py
pytest_plugins = ["tests.web"]

# moto accepts any key pair; boto3 just needs one to sign with. Never real credentials.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
# gRPC (Pub/Sub) restarts its poller in a forked child, which crashes a subprocess that closes
# descriptors before exec (grpc/grpc#43055): a test worker that used Pub/Sub and then started
# PostgreSQL saw it abort. The tests start many subprocesses and fork nothing else.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

settings.register_profile(
    "syncd",
    derandomize=True,
    deadline=None,
    database=None,
    # module-scoped catalogs and emulator buckets are emptied by the tests between examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("explore", settings.get_profile("syncd"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "syncd"))

PROVIDERS = ["local", "s3", "gcs", "azure"]
_counter = itertools.count()


def _start(starter, *args, **kwargs) -> emulators.Emulator:
    try:
        return starter(*args, **kwargs)
    except emulators.EmulatorUnavailable as exc:
        missing(f"emulator unavailable: {exc}")


@pytest.fixture(scope="session", autouse=True)
def own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's caches (botocore's parsed models, providers/botomodels.py) in a folder of
    its own, for this process and every syncd it starts: never the developer's or CI's home."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture(scope="session")
def moto(emu_dir: Path) -> Iterator[emulators.Emulator]:
    emu = _start(emulators.start_moto, emu_dir)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def moto_auth(emu_dir: Path) -> Iterator[emulators.Emulator]:
    emu = _start(emulators.start_moto, emu_dir, enforce_auth=True)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def fake_gcs(emu_dir: Path) -> Iterator[emulators.Emulator]:
    emu = _start(emulators.start_fake_gcs, emu_dir)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def azurite(emu_dir: Path) -> Iterator[emulators.Emulator]:
    emu = _start(emulators.start_azurite, emu_dir)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """A throwaway PostgreSQL server for the session (see tests/pg.py). PostgreSQL tests never
    skip, with or without ``CI``: if no server starts, they fail with the reason."""
    try:
        server = pg.start_server()
    except pg.PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL required but unavailable: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: pg.PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test: its ``postgresql://`` URL. Dropped afterwards,
    with whatever connections the test left open."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


#: the catalog stores every store-level suite runs on
STORES = ["sqlite", "postgresql"]


class CatalogMaker:
    """Fresh, empty catalogs on one store, as many as a test needs (one per hypothesis
    example): a new file each on sqlite; on PostgreSQL the test's one database, emptied, so
    examples do not pay for a ``CREATE DATABASE`` each. Closes what it opened."""

    def __init__(self, store: str, tmp: Path, url: str | None = None) -> None:
        self.store, self.tmp, self.url = store, tmp, url
        self.opened: list[Catalog] = []

    def __call__(self) -> Catalog:
        if self.store == "sqlite":
            catalog = Catalog.open(str(self.tmp / f"c-{next(_counter)}.db"))
        else:
            assert self.url is not None
            self.close()
            catalog = Catalog.open(self.url)
            wipe(catalog)
        self.opened.append(catalog)
        return catalog

    def new_url(self) -> str:
        """A catalog URL, empty: a new sqlite file, or the test's PostgreSQL database wiped."""
        if self.store == "sqlite":
            return str(self.tmp / f"c-{next(_counter)}.db")
        self().close()
        self.opened.pop()
        assert self.url is not None
        return self.url

    def close(self) -> None:
        for catalog in self.opened:
            catalog.close()
        self.opened.clear()


def wipe(catalog: Catalog) -> None:
    """Empty every table of a catalog but its migrations (the schema stays)."""
    tables = [
        "snapshots", "item_undo", "deliveries", "changes", "local_copies", "unrouted_events", "range_attempts", "run_ranges", "run_attempts",
        "pending_deletes", "runs",
        "key_markers", "leases", "workers", "items", "datasets", "drivers", "integrations",
    ]  # fmt: skip
    with catalog.db.transaction():
        for table in tables:
            catalog.db.execute(f"DELETE FROM {table}")
        catalog.db.execute("UPDATE counters SET value = 0")


@pytest.fixture(params=STORES)
def catalogs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogMaker]:
    """A :class:`CatalogMaker` on each store in turn (the test runs once per store)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    maker = CatalogMaker(request.param, tmp_path, url)
    yield maker
    maker.close()
    if url is not None:
        from syncd.store import pg as pg_store

        pg_store.close_pools()  # before the database is dropped


class TokenService(BaseHTTPRequestHandler):
    """A loopback stand-in for Google's OAuth token endpoint: subclasses say what it answers."""

    def answer(self, status: int, body: bytes) -> None:
        """Read the request's body, then answer ``status`` with the JSON ``body``."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class RejectingTokenService(TokenService):
    """Answers every OAuth token request as Google does for a revoked or unknown key."""

    requests = 0  # how many token requests it has refused (tests reset it)
    lock = threading.Lock()

    def do_POST(self) -> None:
        # counted before the answer goes out: the client cannot see a refusal not yet counted
        with type(self).lock:
            type(self).requests += 1
        self.answer(
            400, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
        )


def write_service_account(path: Path, token_uri: str) -> Path:
    """A well-formed service-account key file with a freshly generated RSA key, whose OAuth
    token exchange goes to ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "syncd-test",
                "private_key_id": "test-key-1",
                "private_key": pem,
                "client_email": "syncd-test@syncd-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


@pytest.fixture(scope="session")
def rejected_service_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A well-formed service-account key file whose token exchange is refused."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), RejectingTokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path_factory.mktemp("gcs-sa") / "service-account.json"
    yield write_service_account(path, f"http://127.0.0.1:{server.server_address[1]}/token")
    server.shutdown()


def private_key_of(service_account: str) -> str:
    """The base64 body of the key in a service-account file (what must never be printed)."""
    pem = json.loads(Path(service_account).read_text())["private_key"]
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def catalog_state(catalog: Catalog, dataset: str = "ds") -> dict[str, tuple[int, str]]:
    """A dataset's items as {key: (size, etag)}: what "dataset equals bucket" compares."""
    return {i.key: (i.size, i.etag) for i in catalog.iter_items(catalog.get_dataset(dataset).id)}


def dataset_state(db: str, dataset: str = "ds") -> dict[str, tuple[int, str]]:
    """:func:`catalog_state` of the catalog file ``db``."""
    catalog = Catalog.open(db)
    try:
        return catalog_state(catalog, dataset)
    finally:
        catalog.close()


def unique_bucket(stem: str = "syncd") -> str:
    """A fresh, valid bucket/container name (3-63 chars, lowercase, digits, dashes)."""
    return f"{stem}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


@dataclass
class Backend:
    """How the shared suites reach one provider: make buckets, configs and CLI environments."""

    name: str
    emulator: emulators.Emulator | None
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    auth_emulator: emulators.Emulator | None = None

    # -- buckets ------------------------------------------------------------------------

    def new_bucket(self) -> str:
        name = unique_bucket()
        if self.name == "local":
            path = self.tmp / name
            path.mkdir()
            return str(path)
        if self.name == "s3":
            import boto3

            boto3.client("s3", endpoint_url=self.emulator.url).create_bucket(Bucket=name)
        elif self.name == "gcs":
            self._gcs_client().create_bucket(name)
        elif self.name == "azure":
            from azure.storage.blob import BlobServiceClient

            conn = self.emulator.extra["connection_string"]
            BlobServiceClient.from_connection_string(conn).create_container(name)
        return name

    def missing_bucket(self) -> str:
        return (
            str(self.tmp / "no-such-folder") if self.name == "local" else unique_bucket("missing")
        )

    def _gcs_client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.emulator.url},
        )

    # -- configs ------------------------------------------------------------------------

    def config(self, bucket: str, *, page_size: int = 1000, path: str = "") -> DriverConfig:
        if self.name == "local":
            return DriverConfig(type="local", bucket=bucket, page_size=page_size, path=path)
        if self.name == "azure":
            integ = Integration(
                "azurite", "azure", {"connection_string": "env:SYNCD_TEST_AZURE_CONN"}
            )
            return DriverConfig(
                type="azure", bucket=bucket, integration=integ, page_size=page_size, path=path
            )
        return DriverConfig(
            type=self.name,
            bucket=bucket,
            endpoint=self.emulator.url,
            page_size=page_size,
            path=path,
        )

    def bad_credentials_config(self, bucket: str) -> DriverConfig | None:
        """A config whose credentials are rejected; None where there are none to reject.

        GCS: fake-gcs-server checks no credentials, so the service-account key is rejected
        where Google rejects one, at the OAuth token exchange (a loopback token service that
        answers ``invalid_grant``).
        """
        if self.name == "gcs":
            integ = Integration("wrong", "gcs", {"credentials_file": self.env["SYNCD_TEST_BAD_SA"]})
            return DriverConfig(
                type="gcs", bucket=bucket, endpoint=self.emulator.url, integration=integ
            )
        if self.name == "s3":
            integ = Integration(
                "wrong",
                "s3",
                {
                    "access_key_id": "env:SYNCD_TEST_BAD_KEY",
                    "secret_access_key": "env:SYNCD_TEST_BAD_SECRET",
                },
            )
            return DriverConfig(
                type="s3", bucket=bucket, endpoint=self.auth_emulator.url, integration=integ
            )
        if self.name == "azure":
            integ = Integration(
                "wrong", "azure", {"connection_string": "env:SYNCD_TEST_BAD_AZURE_CONN"}
            )
            return DriverConfig(type="azure", bucket=bucket, integration=integ)
        return None

    # -- CLI ----------------------------------------------------------------------------

    def source(self, bucket: str, prefix: str = "") -> str:
        """The ``syncd sync`` SOURCE argument for this bucket and prefix."""
        scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}.get(self.name)
        if scheme is None:
            return str(Path(bucket) / prefix) if prefix else bucket
        return f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"


BAD_SECRET = "wrong-secret-d0-not-print-me"


@pytest.fixture(scope="session", params=PROVIDERS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """Each provider in turn; tests using it run once per provider."""
    name = request.param
    tmp = tmp_path_factory.mktemp(f"local-{name}")
    if name == "local":
        yield Backend(name, None, tmp)
        return
    if name == "s3":
        emu = request.getfixturevalue("moto")
        auth = request.getfixturevalue("moto_auth")
        os.environ["SYNCD_TEST_BAD_KEY"] = "AKIAWRONGWRONGWRONG1"
        os.environ["SYNCD_TEST_BAD_SECRET"] = BAD_SECRET
        yield Backend(name, emu, tmp, emulators.moto_env(emu), auth_emulator=auth)
    elif name == "gcs":
        emu = request.getfixturevalue("fake_gcs")
        bad_sa = str(request.getfixturevalue("rejected_service_account"))
        yield Backend(
            name, emu, tmp, {"STORAGE_EMULATOR_HOST": emu.url, "SYNCD_TEST_BAD_SA": bad_sa}
        )
    else:
        emu = request.getfixturevalue("azurite")
        conn = emu.extra["connection_string"]
        os.environ["SYNCD_TEST_AZURE_CONN"] = conn
        os.environ["SYNCD_TEST_BAD_AZURE_CONN"] = conn.replace(
            emulators.AZURITE_KEY, BAD_SECRET_B64
        )
        yield Backend(name, emu, tmp, {"AZURE_STORAGE_CONNECTION_STRING": conn})


# a well-formed (base64) account key that is not Azurite's
BAD_SECRET_B64 = (
    "d3Jvbmcta2V5LWQwLW5vdC1wcmludC1tZS13cm9uZy1rZXktZDAtbm90LXByaW50LW1lLXdyb25nLWtleQ=="
)


@pytest.fixture(scope="session")
def azurite_queue(emu_dir: Path) -> Iterator[emulators.Emulator]:
    emu = _start(emulators.start_azurite_queue, emu_dir)
    yield emu
    emu.stop()
