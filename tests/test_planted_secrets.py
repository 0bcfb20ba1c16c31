"""Planted credentials appear nowhere syncd writes or answers (issue 12).

Known, unique values are planted through every way credentials enter: AWS key id, secret and
session token (environment, and ``env:``/``file:`` references of an integration); a generated
service-account key (``credentials_file`` and ``GOOGLE_APPLICATION_CREDENTIALS``) and the OAuth
access token its exchange returns; an Azure account key of an Azurite account of its own
(``account_key`` reference, ``AZURE_STORAGE_CONNECTION_STRING``, a ``connection_string``
reference), a SAS token (``file:`` reference); the API token (``SYNCD_API_TOKEN``); the change
feed's (issue 22): a webhook's signing secret (``env:``), its header values (an ``env:``
``Authorization`` and a literal one) and a token in its URL's query, and the key id and secret
of the integration an SQS sink sends with (``env:``).

Then the commands that touch them run for real against moto, fake-gcs-server and Azurite: syncs
that succeed and syncs that FAIL on wrong credentials (moto with authentication enforced, a
token service that refuses the key, a wrong account key), at ``--debug`` and ``-vv`` with text
and JSON logs and ``--json`` output; pull and push; ``datasets ls/show``, ``runs ls``, ``items
ls``, ``webhooks ls`` and ``sinks ls`` (plain and ``--json``); the daemon with its API (every
endpoint, ``/api/v1/webhooks`` and ``/api/v1/sinks`` included, ``/metrics``, wrong tokens) at
``--debug``, while its webhook's receiver answers 500, 500, then 401 (failing, then paused) and
one sink delivers while the other's queue does not exist (paused).
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
from tests.test_sinks import sqs_target
from tests.test_webhooks import Receiver, Request, head_and_state
from tests.waiting import wait_for

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
WEBHOOK_KEY = "planted-webhook-key/d0-not-print!"  # 32 bytes: the HMAC key
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY.encode()).decode()
HOOK_AUTH = "Bearer planted-hook-auth-d0-not-print-8431"
HOOK_PLAIN = "planted-plain-header-d0-not-print-5530"
HOOK_QUERY = "planted-query-token-d0-not-print-2291"
SINK_KEY_ID = "AKIAPLANTEDSINK00001"
SINK_SECRET = "pLaNtEd/SinkSecret+d0NotPrint/77aa1b"


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
    #: what the webhook's endpoint received: (path with query, request) per request
    hook_requests: list[tuple[str, Request]] = field(default_factory=list)
    #: the messages the delivering sink's queue got (batch id, body)
    sink_messages: list[tuple[str, dict]] = field(default_factory=list)

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

    # the change feed's consumers: a webhook endpoint that fails, then refuses; a queue, and
    # one that does not exist
    answers = iter([500, 500, 401])
    paths: list[str] = []

    def answer(path: str) -> int:
        paths.append(path)
        return next(answers, 200)

    receiver = Receiver(answer)
    request.addfinalizer(receiver.close)
    queue = sqs_target(moto)
    missing_queue = queue.fields["url"].rsplit("/", 1)[0] + "/no-such-queue"

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

[integrations.aws-sink]
type = "s3"
access_key_id = "env:PLANTED_SINK_KEY_ID"
secret_access_key = "env:PLANTED_SINK_SECRET"

[webhooks.hook]
url = "{receiver.url("/hook")}?token={HOOK_QUERY}"
secret = "env:PLANTED_WEBHOOK_SECRET"
headers = {{ Authorization = "env:PLANTED_HOOK_AUTH", X-Team = "{HOOK_PLAIN}", X-Path = "/hook" }}
fail_after = 1

[sinks.queue]
type = "sqs"
url = "{queue.fields["url"]}"
integration = "aws-sink"

[sinks.missing]
type = "sqs"
url = "{missing_queue}"
integration = "aws-sink"

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
        "PLANTED_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PLANTED_HOOK_AUTH": HOOK_AUTH,
        "PLANTED_SINK_KEY_ID": SINK_KEY_ID,
        "PLANTED_SINK_SECRET": SINK_SECRET,
        # the sinks' SQS is moto's (the S3 drivers name their endpoints)
        "AWS_ENDPOINT_URL_SQS": moto.url,
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
        "webhook secret": WEBHOOK_SECRET,
        "webhook secret, its key in base64": WEBHOOK_SECRET.removeprefix("whsec_"),
        "webhook secret, its key": WEBHOOK_KEY,
        "webhook Authorization header": HOOK_AUTH,
        "webhook Authorization token": HOOK_AUTH.removeprefix("Bearer "),
        "webhook plain header": HOOK_PLAIN,
        "webhook URL query token": HOOK_QUERY,
        "sink access key id": SINK_KEY_ID,
        "sink secret access key": SINK_SECRET,
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
        # the feed's consumers reach their states before the API is asked about them
        wait_for(lambda: (s := head_and_state(db, "hook")[1]) and s.paused, "the 401")
        wait_for(lambda: (s := head_and_state(db, "missing")[1]) and s.paused, "no queue")
        wait_for(lambda: (h := head_and_state(db, "queue"))[1] and h[1].cursor == h[0] > 0,
                   "the sink to deliver")  # fmt: skip
        _exercise_api(w, api_port)
        w.read_catalog("while the daemon runs")
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=60)
    w.seen["daemon log"] = daemon.log_path.read_text(errors="replace")
    w.hook_requests = list(zip(paths, receiver.of("/hook"), strict=True))
    w.sink_messages = queue.read()
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
    config = str(w.tmp / "syncd.toml")
    for kind in ("webhooks", "sinks"):
        for form in ((), ("--json",)):
            name = f"{kind} ls{' --json' if form else ''} ({when})"
            w.run(name, kind, "ls", *form, "--db", db, "--config", config)


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
    call("GET", "/api/v1/webhooks")
    call("GET", "/api/v1/sinks")
    call("GET", "/api/v1/changes?limit=1000")
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


def test_the_feed_really_used_and_was_refused_its_secrets(world: World) -> None:
    """The webhook's endpoint got the signed requests with the planted headers and query (so
    the daemon held them), answered 500, 500, 401 (failing, then paused: errors that name the
    endpoint were logged, stored and listed); one sink delivered with the planted key while
    the other was refused; the API, metrics and both ``ls`` commands show it all."""
    from standardwebhooks import Webhook

    verifier = Webhook(WEBHOOK_SECRET)
    requests = world.hook_requests
    assert [r.answer for _, r in requests] == ["500", "500", "401"]
    for path, r in requests:
        assert path == f"/hook?token={urllib.parse.quote(HOOK_QUERY)}"
        assert (r.headers["authorization"], r.headers["x-team"]) == (HOOK_AUTH, HOOK_PLAIN)
        verifier.verify(r.body, r.headers)
    assert len({r.id for _, r in requests}) == 1  # one batch, tried three times
    log = world.seen["daemon log"]
    assert "answered HTTP 500" in log and "webhook 'hook' paused" in log
    assert "sink 'missing' paused" in log
    r = world.results
    (hook,) = json.loads(r["api GET /api/v1/webhooks"].stdout)["webhooks"]
    assert hook["url"].endswith("/hook?...") and hook["state"] == "paused", hook
    assert "HTTP 401" in hook["last_error"]
    sinks = json.loads(r["api GET /api/v1/sinks"].stdout)["sinks"]
    assert [(s["name"], s["state"]) for s in sinks] == [("missing", "paused"), ("queue", "ok")]
    metrics = r["api GET /metrics"].stdout
    assert 'syncd_webhook_failures_total{webhook="hook"} 3.0' in metrics
    assert 'syncd_webhook_lag_changes{webhook="hook"}' in metrics
    assert 'syncd_sink_failures_total{sink="missing"} 1.0' in metrics
    assert 'syncd_sink_delivered_total{sink="queue"}' in metrics
    for kind in ("webhooks", "sinks"):
        plain, as_json = (
            r[f"{kind} ls (after the daemon)"],
            r[f"{kind} ls --json (after the daemon)"],
        )
        assert plain.returncode == 0 and as_json.returncode == 0, (plain.stderr, as_json.stderr)
        assert "paused" in plain.stdout
        assert "paused" in {json.loads(line)["state"] for line in as_json.stdout.splitlines()}
    assert world.sink_messages and all(body["sink"] == "queue" for _, body in world.sink_messages)
    # every change the log held while the API was asked reached the queue (more may follow)
    changes = json.loads(r["api GET /api/v1/changes?limit=1000"].stdout)["changes"]
    sent = sorted({c["cursor"] for _, body in world.sink_messages for c in body["changes"]})
    assert changes and sent[: len(changes)] == [c["cursor"] for c in changes]


# -- an integration created over the HTTP API (issue 24) -----------------------------------

RT_KEY_ID = "AKIAPLANTEDRUNT1ME01"
RT_SECRET = "pLaNtEd/RuntimeSecret+d0NotPrint/19c3e7"
RT_LITERAL = "pLaNtEd/LiteralSecret+d0NotPrint/a4b2c9"
RT_TOKEN = "planted-runtime-api-token-d0-not-print-77e1"


def test_an_integration_created_over_the_api_leaks_nowhere(
    tmp_path: Path, moto: Emulator, moto_auth: Emulator
) -> None:
    """A daemon started with no dataset (``--debug``): an integration of ``env:`` references
    to planted AWS keys is created over the API, a literal secret is refused, and two datasets
    use the integration: one on moto (synced with the planted keys), one on moto enforcing
    authentication (refused). Every API answer (integrations, datasets, runs, health), the
    daemon's log and the catalog's bytes are searched for the planted values."""
    bucket = unique_bucket()
    s3 = boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    db = str(tmp_path / "c.db")
    env = {
        "SYNCD_API_TOKEN": RT_TOKEN,
        "SYNCD_PLANTED_KEY_ID": RT_KEY_ID,
        "SYNCD_PLANTED_SECRET": RT_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.url,
    }
    seen: dict[str, str] = {}
    answers: dict[str, tuple[int, str]] = {}

    def call(method: str, path: str, body: object = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Authorization": f"Bearer {RT_TOKEN}"})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        seen[f"api {method} {path} {len(seen)}"] = text
        return resp.status, text

    argv = [*PYTHON_SYNCD, "--debug", "run", "--config", str(config), "--db", db]
    daemon = start_process("planted-runtime", argv, tmp_path, "/healthz", port, env)
    try:
        answers["integration"] = call(
            "POST",
            "/api/v1/integrations",
            {
                "name": "rt-aws",
                "type": "s3",
                "access_key_id": "env:SYNCD_PLANTED_KEY_ID",
                "secret_access_key": "env:SYNCD_PLANTED_SECRET",
            },
        )
        answers["literal"] = call(
            "POST",
            "/api/v1/integrations",
            {"name": "rt-leak", "type": "s3", "secret_access_key": RT_LITERAL},
        )
        answers["ok dataset"] = call(
            "POST",
            "/api/v1/datasets",
            {"name": "rtok", "source": f"s3://{bucket}/", "integration": "rt-aws"},
        )
        answers["refused dataset"] = call(
            "POST",
            "/api/v1/datasets",
            {
                "name": "rtrefused",
                "driver": {"type": "s3", "bucket": bucket, "endpoint": moto_auth.url},
                "integration": "rt-aws",
            },
        )

        def runs(name: str) -> list[dict]:
            status, text = call("GET", f"/api/v1/datasets/{name}/runs")
            return json.loads(text)["runs"] if status == 200 else []

        wait_for(lambda: any(r["status"] == "completed" for r in runs("rtok")), "rtok to be synced")
        wait_for(lambda: any(r["status"] == "failed" for r in runs("rtrefused")), "the refusal")
        for path in (
            "/api/v1/integrations",
            "/api/v1/datasets",
            "/api/v1/datasets/rtok",
            "/api/v1/datasets/rtrefused",
            "/api/v1/datasets/rtok/items",
            "/healthz",
            "/metrics",
        ):
            call("GET", path)
        for path in sorted(tmp_path.glob("c.db*")):
            seen[f"while running: {path.name}"] = path.read_bytes().decode("latin-1")
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=60)
    seen["daemon log"] = daemon.log_path.read_text(errors="replace")
    for path in sorted(tmp_path.glob("c.db*")):
        seen[f"after: {path.name}"] = path.read_bytes().decode("latin-1")

    # the scenario really used the references and refused the literal
    assert answers["integration"][0] == 201, answers["integration"]
    assert json.loads(answers["integration"][1])["fields"] == {
        "access_key_id": "env:SYNCD_PLANTED_KEY_ID",
        "secret_access_key": "env:SYNCD_PLANTED_SECRET",
    }
    assert answers["literal"][0] == 400 and "literal secret" in answers["literal"][1]
    assert answers["ok dataset"][0] == 201 and answers["refused dataset"][0] == 201
    refused = [r for r in runs_of(seen, "rtrefused") if r["status"] == "failed"]
    assert refused and all("credentials" in r["error"] for r in refused), refused
    assert daemon.process.returncode == 0

    planted = {"key id": RT_KEY_ID, "secret": RT_SECRET, "literal": RT_LITERAL, "token": RT_TOKEN}
    found = [
        f"{what} in {surface}"
        for surface, text in seen.items()
        for what, value in planted.items()
        for form in forms(value)
        if form in text
    ]
    assert found == []


def runs_of(seen: dict[str, str], name: str) -> list[dict]:
    """The runs of ``name`` in the last answer of its runs endpoint that was seen."""
    texts = [t for k, t in seen.items() if k.startswith(f"api GET /api/v1/datasets/{name}/runs")]
    return json.loads(texts[-1])["runs"] if texts else []
