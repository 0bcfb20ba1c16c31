"""Planted credentials appear nowhere syncd writes or answers (issue 12).

Known, unique values are planted through every way credentials enter: AWS key id, secret and
session token (environment, and ``env:``/``file:`` references of an integration); a generated
service-account key (``credentials_file`` and ``GOOGLE_APPLICATION_CREDENTIALS``) and the OAuth
access token its exchange returns; an Azure account key of an Azurite account of its own
(``account_key`` reference, ``AZURE_STORAGE_CONNECTION_STRING``, a ``connection_string``
reference), a SAS token (``file:`` reference); the API token (``SYNCD_API_TOKEN``).

Then the commands that touch them run for real against moto, fake-gcs-server and Azurite: syncs
that succeed and syncs that FAIL on wrong credentials (moto with authentication enforced, a
token service that refuses the key, a wrong account key), at ``--debug`` and ``-vv`` with text
and JSON logs and ``--json`` output; pull and push; ``datasets ls/show``, ``runs ls``, ``items
ls``; the daemon with its API (every endpoint, ``/metrics``, wrong tokens) at ``--debug``.
Everything they print, every API answer, and the raw bytes of the catalog and its ``-wal`` and
``-shm`` files (read while the daemon runs, and after) are searched for each value, and for its
URL-encoded and base64 forms.

The one place a credential is *meant* to go is a presigned URL (``GET .../url``): by the
protocol an S3 presigned URL names the access key id and carries the session token (SECURITY.md
says so); that ``Location`` is checked for everything else.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from tests.conftest import (
    TokenService,
    _start,
    private_key_of,
    unique_bucket,
    write_service_account,
)
from tests.emulators import Emulator, free_port, start_azurite, start_process

PYTHON_SYNCD = (sys.executable, "-m", "syncd.cli")

AWS_KEY_ID = "AKIAPLANTEDK3Y1D0001"
AWS_SECRET = "pLaNtEd/AwsSecret+d0NotPrint/3f9a1c2e4b5d"
AWS_SESSION = "FwoGZXIvYXdzEPLANTED/sessi0n+t0ken/d0NotPrint7c21e5a9=="
GCS_ACCESS_TOKEN = "ya29.planted-oauth-access-token-d0-not-print-51b7"
API_TOKEN = "planted-api-token-d0-not-print-4e7b91"
AZ_ACCOUNT = "plantedacct"
AZ_KEY = base64.b64encode(b"planted-azure-account-key/d0-not-print/" + bytes(range(25))).decode()
AZ_WRONG_KEY = base64.b64encode(
    b"wrong-azure-account-key/d0-not-print/" + bytes(range(27))
).decode()


class GrantingTokenService(TokenService):
    """Google's OAuth token endpoint for a valid service-account key: grants the planted
    access token (fake-gcs-server then accepts it as any bearer)."""

    def do_POST(self) -> None:
        grant = {"access_token": GCS_ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        self.answer(200, json.dumps(grant).encode())


def forms(value: str) -> set[str]:
    """A secret as it could be written: itself, URL-encoded, base64 (the encoded forms only
    where they differ, so short plain words do not match by accident)."""
    return {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        base64.b64encode(value.encode()).decode(),
    }


@dataclass
class World:
    """What the scenario ran and everything it saw."""

    tmp: Path
    env: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict)
    #: name -> text syncd printed, answered or wrote
    seen: dict[str, str] = field(default_factory=dict)
    #: S3 presigned URLs the API redirected to (checked apart, see the module docstring)
    presigned: dict[str, str] = field(default_factory=dict)
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def run(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        proc = subprocess.run(
            [*PYTHON_SYNCD, *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=300,
        )
        self.results[name] = proc
        self.seen[f"{name}: stdout"] = proc.stdout
        self.seen[f"{name}: stderr"] = proc.stderr

    def read_catalog(self, when: str) -> None:
        for path in sorted(self.tmp.glob("c.db*")):
            # latin-1 maps every byte to one character: a search of the text is a byte search
            self.seen[f"{when}: {path.name}"] = path.read_bytes().decode("latin-1")


def _sas_token(container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        AZ_ACCOUNT,
        container,
        account_key=AZ_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=2),
    )


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    moto: Emulator,
    moto_auth: Emulator,
    fake_gcs: Emulator,
    rejected_service_account: Path,
    request: pytest.FixtureRequest,
) -> Iterator[World]:
    # an Azurite of its own, whose only account has a key nobody else knows
    azurite = _start(start_azurite, tmp_path_factory.mktemp("az"), account=AZ_ACCOUNT, key=AZ_KEY)
    request.addfinalizer(azurite.stop)
    tokens = ThreadingHTTPServer(("127.0.0.1", 0), GrantingTokenService)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    request.addfinalizer(tokens.shutdown)

    tmp = tmp_path_factory.mktemp("planted")
    good_sa = write_service_account(
        tmp / "sa.json", f"http://127.0.0.1:{tokens.server_address[1]}/token"
    )

    # buckets with a few objects each
    s3_bucket, gcs_bucket, container = unique_bucket(), unique_bucket(), unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=s3_bucket)
    for key in ("a.txt", "dir/b.txt"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    gcs = storage.Client(
        project="t",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake_gcs.url},
    )
    gcs.create_bucket(gcs_bucket).blob("a.txt").upload_from_string(b"a")
    from azure.storage.blob import BlobServiceClient

    conn = azurite.extra["connection_string"]
    service = BlobServiceClient.from_connection_string(conn)
    service.create_container(container)
    service.get_blob_client(container, "a.txt").upload_blob(b"a")
    sas = _sas_token(container)

    (tmp / "aws-secret").write_text(AWS_SECRET)
    (tmp / "sas").write_text(sas)
    endpoint = azurite.extra["blob_endpoint"]
    config = tmp / "syncd.toml"
    api_port = free_port()
    config.write_text(
        f"""
[integrations.aws]
type = "s3"
access_key_id = "env:PLANTED_AWS_KEY_ID"
secret_access_key = "file:{tmp / "aws-secret"}"
session_token = "env:PLANTED_AWS_SESSION"

[integrations.gcs]
type = "gcs"
credentials_file = "{good_sa}"

[integrations.gcs-refused]
type = "gcs"
credentials_file = "{rejected_service_account}"

[integrations.az-key]
type = "azure"
account_name = "{AZ_ACCOUNT}"
account_key = "env:PLANTED_AZ_KEY"

[integrations.az-sas]
type = "azure"
account_name = "{AZ_ACCOUNT}"
sas_token = "file:{tmp / "sas"}"

[integrations.az-conn]
type = "azure"
connection_string = "env:PLANTED_AZ_CONN"

[integrations.az-wrong]
type = "azure"
account_name = "{AZ_ACCOUNT}"
account_key = "env:PLANTED_AZ_WRONG_KEY"

[drivers.s3ok]
type = "s3"
bucket = "{s3_bucket}"
endpoint = "{moto.url}"
integration = "aws"

[drivers.s3refused]
type = "s3"
bucket = "{s3_bucket}"
endpoint = "{moto_auth.url}"
integration = "aws"

[drivers.gcsok]
type = "gcs"
bucket = "{gcs_bucket}"
endpoint = "{fake_gcs.url}"
integration = "gcs"

[drivers.gcsrefused]
type = "gcs"
bucket = "{gcs_bucket}"
endpoint = "{fake_gcs.url}"
integration = "gcs-refused"

[drivers.azkey]
type = "azure"
bucket = "{container}"
endpoint = "{endpoint}"
integration = "az-key"

[drivers.azsas]
type = "azure"
bucket = "{container}"
endpoint = "{endpoint}"
integration = "az-sas"

[drivers.azconn]
type = "azure"
bucket = "{container}"
integration = "az-conn"

[drivers.azwrong]
type = "azure"
bucket = "{container}"
endpoint = "{endpoint}"
integration = "az-wrong"

[datasets.s3ok]
driver = "s3ok"
[datasets.s3refused]
driver = "s3refused"
[datasets.gcsok]
driver = "gcsok"
[datasets.gcsrefused]
driver = "gcsrefused"
[datasets.azkey]
driver = "azkey"
[datasets.azsas]
driver = "azsas"
[datasets.azconn]
driver = "azconn"
[datasets.azwrong]
driver = "azwrong"

[server]
port = {api_port}
"""
    )
    # only the planted credentials: none of the suite's own
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "STORAGE_EMULATOR", "SYNCD_"))
    }
    env = {
        **base,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PLANTED_AWS_KEY_ID": AWS_KEY_ID,
        "PLANTED_AWS_SESSION": AWS_SESSION,
        "PLANTED_AZ_KEY": AZ_KEY,
        "PLANTED_AZ_WRONG_KEY": AZ_WRONG_KEY,
        "PLANTED_AZ_CONN": conn,
        "SYNCD_API_TOKEN": API_TOKEN,
        "SYNCD_RETRY_ATTEMPTS": "2",
    }
    w = World(tmp, env)
    sa_keys = {
        "gcs service-account key": private_key_of(str(good_sa)),
        "refused service-account key": private_key_of(str(rejected_service_account)),
    }
    w.secrets = {
        "aws access key id": AWS_KEY_ID,
        "aws secret": AWS_SECRET,
        "aws session token": AWS_SESSION,
        "gcs access token": GCS_ACCESS_TOKEN,
        "azure account key": AZ_KEY,
        "wrong azure account key": AZ_WRONG_KEY,
        "azure connection string": conn,
        "sas token": sas,
        "sas signature": urllib.parse.parse_qs(sas)["sig"][0],
        "api token": API_TOKEN,
        **sa_keys,
    }
    for name, pem_body in sa_keys.items():
        # a single line of the key printed would be a leak too
        for i in range(0, len(pem_body) - 64, 64):
            w.secrets[f"{name} line {i // 64}"] = pem_body[i : i + 64]

    db = str(tmp / "c.db")
    cfg = str(config)
    # every configured dataset: four succeed, four fail on their credentials
    w.run("sync --config --debug --json", "--debug", "sync", "--config", cfg, "--db", db, "--json")
    w.run(
        "sync -vv --log-format json (sas)",
        "-vv", "--log-format", "json", "sync", "--config", cfg, "--dataset", "azsas", "--db", db,
    )  # fmt: skip
    w.run(
        "sync -vv (refused s3)", "-vv", "sync", "--config", cfg, "--dataset", "s3refused",
        "--db", db, "--json",
    )  # fmt: skip
    w.run(
        "sync --debug (wrong azure key)", "--debug", "sync", "--config", cfg, "--dataset",
        "azwrong", "--db", db,
    )  # fmt: skip
    # the standard chains, from the environment
    w.run(
        "sync s3 from env", "--debug", "sync", f"s3://{s3_bucket}", "--dataset", "s3env",
        "--db", db, "--json",
        env={
            "AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_SESSION_TOKEN": AWS_SESSION,
        },
    )  # fmt: skip
    w.run(
        "sync s3 from env, refused", "--debug", "sync", f"s3://{s3_bucket}", "--dataset",
        "s3envrefused", "--db", db, "--json",
        env={
            "AWS_ENDPOINT_URL": moto_auth.url, "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_SESSION_TOKEN": AWS_SESSION,
        },
    )  # fmt: skip
    w.run(
        "sync azure from env", "--debug", "sync", f"az://{container}", "--dataset", "azenv",
        "--db", db, "--json", env={"AZURE_STORAGE_CONNECTION_STRING": conn},
    )  # fmt: skip
    w.run(
        "sync azure from env, wrong key", "--debug", "sync", f"az://{container}", "--dataset",
        "azenvwrong", "--db", db,
        env={"AZURE_STORAGE_CONNECTION_STRING": conn.replace(AZ_KEY, AZ_WRONG_KEY)},
    )  # fmt: skip
    w.run(
        "sync gcs from env", "--debug", "sync", f"gs://{gcs_bucket}", "--dataset", "gcsenv",
        "--db", db, "--json",
        env={"GOOGLE_APPLICATION_CREDENTIALS": str(good_sa), "STORAGE_EMULATOR_HOST": fake_gcs.url},
    )  # fmt: skip
    # pull and push through integrations
    w.run(
        "pull s3", "--debug", "pull", "--dataset", "s3ok", str(tmp / "pulled"), "--db", db, "--json"
    )
    (tmp / "outbox").mkdir()
    (tmp / "outbox" / "new.txt").write_text("new")
    w.run(
        "push azure",
        "--debug",
        "push",
        str(tmp / "outbox"),
        "--dataset",
        "azkey",
        "--db",
        db,
        "--json",
    )
    w.run(
        "pull azure sas",
        "--debug",
        "pull",
        "--dataset",
        "azsas",
        str(tmp / "pulled-az"),
        "--db",
        db,
    )
    w.run("datasets ls --json (after the CLI)", "datasets", "ls", "--db", db, "--json")
    w.read_catalog("after the CLI")

    # the daemon and its API
    argv = [*PYTHON_SYNCD, "--debug", "run", "--config", cfg, "--db", db]
    daemon = start_process("planted-daemon", argv, tmp, "/healthz", api_port, env)
    try:
        _exercise_api(w, api_port)
        w.read_catalog("while the daemon runs")
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=60)
    w.seen["daemon log"] = daemon.log_path.read_text(errors="replace")
    w.results["daemon"] = subprocess.CompletedProcess(argv, daemon.process.returncode, "", "")
    # the daemon created the datasets whose first sync failed: their runs hold the errors
    _read_back(w, db, "after the daemon")
    w.read_catalog("after the daemon")
    yield w


DATASETS = ("s3ok", "s3refused", "gcsok", "gcsrefused", "azkey", "azsas", "azconn", "azwrong")
REFUSED = ("s3refused", "gcsrefused", "azwrong")


def _read_back(w: World, db: str, when: str) -> None:
    """What the catalog says, through every listing command."""
    w.run(f"datasets ls ({when})", "datasets", "ls", "--db", db)
    w.run(f"datasets ls --json ({when})", "datasets", "ls", "--db", db, "--json")
    w.run(f"events unrouted ({when})", "events", "unrouted", "--db", db, "--json")
    for name in (*DATASETS, "s3env", "azenv", "gcsenv"):
        w.run(f"datasets show {name} ({when})", "datasets", "show", name, "--db", db, "--json")
        w.run(f"runs ls {name} ({when})", "runs", "ls", "--dataset", name, "--db", db, "--json")
        if name in REFUSED:  # the text table of runs whose errors are credential errors
            w.run(f"runs ls {name} text ({when})", "runs", "ls", "--dataset", name, "--db", db)
    w.run(f"items ls s3ok ({when})", "items", "ls", "--dataset", "s3ok", "--db", db, "--json")


def _exercise_api(w: World, port: int) -> None:
    def call(
        method: str, path: str, body: bytes | None = None, token: str = API_TOKEN, as_: str = ""
    ) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
            headers = "\n".join(f"{k}: {v}" for k, v in resp.getheaders())
        finally:
            conn.close()
        name = as_ or f"api {method} {path}"
        w.results[name] = subprocess.CompletedProcess(path, resp.status, text)
        location = resp.getheader("Location") or ""
        if resp.status == 302 and "X-Amz-Credential" in location:
            w.presigned[path] = location
            headers = headers.replace(location, "<presigned>")
        w.seen[f"{name} (status {resp.status})"] = f"{headers}\n\n{text}"

    call("GET", "/api/v1/datasets")
    for name in DATASETS:
        call("GET", f"/api/v1/datasets/{name}")
        call("GET", f"/api/v1/datasets/{name}/items")
        call("GET", f"/api/v1/datasets/{name}/items/a.txt")
        call("GET", f"/api/v1/datasets/{name}/items/a.txt/url")
        call("GET", f"/api/v1/datasets/{name}/runs")
        call("POST", f"/api/v1/datasets/{name}/sync")
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-20T10:00:00.000Z",
                "s3": {"bucket": {"name": "no-such-bucket"}, "object": {"key": "k", "size": 1}},
            }
        ]
    }
    call("POST", "/api/v1/events", json.dumps(event).encode())
    call("GET", "/api/v1/datasets", token=API_TOKEN[:-1] + "x", as_="api wrong token")
    call("GET", "/metrics")


def leaks(w: World, texts: dict[str, str]) -> list[str]:
    found = []
    for surface, text in texts.items():
        for secret, value in w.secrets.items():
            for form in forms(value):
                if form in text:
                    found.append(f"{secret} ({form[:12]}...) in {surface}")
    return found


def test_no_planted_secret_in_output_logs_errors_api_metrics_or_catalog(world: World) -> None:
    assert leaks(world, world.seen) == []


def test_presigned_urls_carry_no_secret_beyond_what_the_protocol_needs(world: World) -> None:
    # an S3 presigned URL names the access key id and carries the session token, by design
    assert world.presigned, "the API presigned no S3 URL: the check below would prove nothing"
    for path, url in world.presigned.items():
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert query["X-Amz-Credential"][0].startswith(AWS_KEY_ID), path
        assert query["X-Amz-Security-Token"] == [AWS_SESSION], path
    allowed = {"aws access key id", "aws session token"}
    rest = World(world.tmp, {}, {k: v for k, v in world.secrets.items() if k not in allowed})
    assert leaks(rest, world.presigned) == []


def test_the_scenario_really_used_and_refused_the_credentials(world: World) -> None:
    """Without these, finding no secret would prove nothing."""
    r = world.results
    summaries = [
        json.loads(line)["summary"]
        for line in r["sync --config --debug --json"].stdout.splitlines()
        if '"summary"' in line
    ]
    assert len(summaries) >= 4, r["sync --config --debug --json"].stderr[-3000:]
    assert r["sync --config --debug --json"].returncode == 1  # some failed
    err = r["sync --config --debug --json"].stderr
    assert "botocore" in err and "azure.core" in err and "google" in err  # SDK debug output
    for name in ("s3 from env", "azure from env", "gcs from env"):
        assert r[f"sync {name}"].returncode == 0, r[f"sync {name}"].stderr[-3000:]
    for name in ("sync -vv (refused s3)", "sync --debug (wrong azure key)",
                 "sync s3 from env, refused", "sync azure from env, wrong key"):  # fmt: skip
        assert r[name].returncode == 1, (name, r[name].stderr[-3000:])
    assert "credentials" in r["sync -vv (refused s3)"].stderr
    assert r["sync -vv --log-format json (sas)"].returncode == 0
    assert r["pull s3"].returncode == 0 and r["push azure"].returncode == 0
    assert r["pull azure sas"].returncode == 0, r["pull azure sas"].stderr[-3000:]
    # every run of the refused datasets failed on its credentials; the others completed
    # (a reconcile the test triggered may have been stopped by the daemon's shutdown)
    for name in DATASETS:
        proc = r[f"runs ls {name} (after the daemon)"]
        runs = [json.loads(line) for line in proc.stdout.splitlines()]
        assert runs, (name, proc.stderr)
        if name in REFUSED:
            assert all(run["status"] == "failed" for run in runs), (name, runs)
            assert all("credentials" in run["error"] for run in runs), (name, runs)
        else:
            assert any(run["status"] == "completed" for run in runs), (name, runs)
    assert r["api GET /api/v1/datasets"].returncode == 200
    sas_url = r["api GET /api/v1/datasets/azsas/items/a.txt/url"]
    assert sas_url.returncode == 502 and "SAS token credential" in sas_url.stdout
    assert r["api wrong token"].returncode == 401
    assert r["api GET /metrics"].returncode == 200
    assert "syncd_sync_runs_total" in r["api GET /metrics"].stdout
    assert r["daemon"].returncode == 0
    assert any(name.endswith(".db-wal") for name in world.seen if name.startswith("while"))
