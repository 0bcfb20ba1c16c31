"""Role-based credentials (issue 24, item 3): AWS AssumeRole with an external ID, an Azure
service principal, GCP service-account impersonation.

AWS runs on a moto server of this module's own whose IAM checks are switched on after the
setup (``POST /moto-api/reset-auth``): moto then checks every signature, the caller's
identity policy (action *and* resource) and, for ``sts:AssumeRole`` on a role that exists, the
role's trust policy with its ``StringEquals sts:ExternalId`` condition. So a wrong role ARN and
a wrong external ID are really refused, and the role's own policy (list and read, nothing else)
is what the S3 and SQS requests are checked against. What moto does not do: it lets an
AssumeRole *without* an ExternalId through a trust policy that demands one (its condition check
only compares the values it was sent), and it never expires assumed credentials (so the refresh
test counts AssumeRole calls and looks at which key signs each request, through a recording
proxy, instead of waiting for a refusal).

Azure and GCP have no emulator for their token services; their SDK seams are used instead:
loopback servers stand in for the Microsoft Entra ID token endpoint (the integration's
``authority``, over TLS with a certificate made here, as azure-identity demands) and for
Google's OAuth token endpoint and IAM credentials ``generateAccessToken`` (google-auth's
``iam_endpoint_override``). They check what the SDK sends; the token they hand out is then
checked where storage receives it: Azurite over HTTPS with ``--oauth basic`` (it checks a
bearer token's issuer, audience and lifetime, not its signature) and a recording proxy in
front of fake-gcs-server (which checks nothing). Not covered: real Entra ID and IAM decisions
(which roles a principal holds), token signatures, and the Azure queues' and Pub/Sub's use
of the token on the wire (their clients' credentials are checked, not their requests).

The secret checks of these credentials live here, not in test_planted_secrets.py (another
change is editing that file).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from providers import DriverConfig, Integration, errors, open_driver
from providers.config import ConfigError
from providers.credentials import aws_session, refresh_margins
from providers.s3 import S3Driver
from tests.conftest import unique_bucket
from tests.emulators import Emulator, start_moto

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"  # moto's default account
USER = "syncd-base"
ROLE = "syncd-reader"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
#: a typo of the role's name: the base user may not assume it (nor does it exist)
WRONG_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/syncd-raeder"
EXTERNAL_ID = "tenant-7f3a9c-ext"
WRONG_EXTERNAL_ID = "tenant-0000-ext"
OBJECTS = [f"data/{i:02d}.txt" for i in range(7)]


# -- a recording loopback proxy ------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingProxy:
    """Forwards every request to ``upstream`` unchanged and records it (headers and body),
    so a test can read what an SDK really sent."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        up = urlsplit(self.upstream)
        proxy = self
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def assume_role_calls(self) -> list[dict[str, str]]:
        """The parameters of every AssumeRole request seen (STS's query protocol)."""
        with self.lock:
            forms = [parse_qs(s.body.decode()) for s in self.seen if s.method == "POST"]
        return [
            {k: v[0] for k, v in form.items()}
            for form in forms
            if form.get("Action") == ["AssumeRole"]
        ]

    def signing_keys(self, path_part: str) -> list[str]:
        """The access key id that signed each request whose path contains ``path_part``."""
        with self.lock:
            found = [s for s in self.seen if path_part in s.path]
        keys = []
        for s in found:
            auth = s.headers.get("Authorization") or s.headers.get("authorization") or ""
            match = re.search(r"Credential=([^/]+)/", auth)
            keys.append(match.group(1) if match else "")
        return keys

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the AWS world: a moto with IAM checks on -----------------------------------------------


@dataclass
class AwsWorld:
    moto: Emulator
    bucket: str
    queue_url: str
    key_id: str
    secret: str


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _template_policies(principal: str, external_id: str, bucket: str) -> tuple[str, str]:
    """The trust and permissions policies of infra/aws/bucket-owner-role.yaml as JSON, with
    its parameters filled in (the YAML reader turns ``!Ref X`` into ``X``)."""
    from tests.test_infra import cloudformation

    role = cloudformation(ROOT / "infra" / "aws" / "bucket-owner-role.yaml")["Resources"][
        "SyncdReadRole"
    ]["Properties"]
    text = json.dumps(role["AssumeRolePolicyDocument"])
    text = text.replace('"SyncdPrincipalArn"', json.dumps(principal))
    trust = text.replace('"ExternalId"', json.dumps(external_id))
    permissions = json.dumps(role["Policies"][0]["PolicyDocument"])
    permissions = permissions.replace("${AWS::Partition}", "aws").replace("${BucketName}", bucket)
    return trust, permissions


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsWorld]:
    """A moto of its own: a base IAM user allowed only ``sts:AssumeRole`` on ROLE_ARN; the role
    trusts that user with ``sts:ExternalId`` = EXTERNAL_ID and may list and read one bucket and
    receive/delete/send on one queue. IAM checks go on once this is set up."""
    emu = start_moto(tmp_path_factory.mktemp("moto-roles"))
    try:
        kw = {"endpoint_url": emu.url, "region_name": "us-east-1"}
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName=USER)
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        user_arn = f"arn:aws:iam::{ACCOUNT}:user/{USER}"
        iam.put_user_policy(
            UserName=USER,
            PolicyName="assume-the-reader",
            PolicyDocument=_policy(
                {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": ROLE_ARN}
            ),
        )
        bucket = unique_bucket()
        # the role exactly as infra/aws/bucket-owner-role.yaml makes it, parameters filled in
        trust, permissions = _template_policies(user_arn, EXTERNAL_ID, bucket)
        iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=trust)
        iam.put_role_policy(RoleName=ROLE, PolicyName="template", PolicyDocument=permissions)
        s3 = boto3.client("s3", **kw)
        s3.create_bucket(Bucket=bucket)
        for name in OBJECTS:
            s3.put_object(Bucket=bucket, Key=name, Body=name.encode())
        sqs = boto3.client("sqs", **kw)
        queue_url = sqs.create_queue(QueueName=f"q-{bucket}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        # and the queue a daemon reads events from (and a sink could send to)
        iam.put_role_policy(
            RoleName=ROLE,
            PolicyName="one-queue",
            PolicyDocument=_policy(
                {
                    "Effect": "Allow",
                    # moto checks DeleteMessageBatch under its own name; AWS checks it as
                    # sqs:DeleteMessage (what infra/aws/daemon-queue.yaml grants)
                    "Action": [
                        "sqs:ReceiveMessage",
                        "sqs:DeleteMessage",
                        "sqs:DeleteMessageBatch",
                        "sqs:SendMessage",
                    ],
                    "Resource": queue_arn,
                }
            ),
        )
        # from here on every request is authenticated and authorized
        req = urllib.request.Request(
            f"{emu.url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would be parsed away
        )
        urllib.request.urlopen(req, timeout=10).close()
        yield AwsWorld(emu, bucket, queue_url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        emu.stop()


def _fields(world: AwsWorld, tmp: Path, **extra: str) -> dict[str, str]:
    secret_file = tmp / "base-secret"
    secret_file.write_text(world.secret)
    os.environ["ROLES_TEST_KEY_ID"] = world.key_id
    return {
        "access_key_id": "env:ROLES_TEST_KEY_ID",
        "secret_access_key": f"file:{secret_file}",
        **extra,
    }


def _config(world: AwsWorld, tmp: Path, **integration: str) -> Path:
    fields = _fields(world, tmp, **integration)
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    cfg = tmp / "syncd.toml"
    cfg.write_text(
        f"""
[integrations.role]
type = "s3"
{lines}

[drivers.d]
type = "s3"
bucket = "{world.bucket}"
endpoint = "{world.moto.url}"
integration = "role"

[datasets.ds]
driver = "d"
"""
    )
    return cfg


def _syncd(world: AwsWorld, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "STORAGE_EMULATOR"))
    }
    env |= {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_STS": world.moto.url,  # STS at the emulator; S3 by the driver
        "SYNCD_RETRY_ATTEMPTS": "2",
        "ROLES_TEST_KEY_ID": world.key_id,
    }
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )


def _catalog_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


# -- AWS -------------------------------------------------------------------------------------


def test_the_right_external_id_syncs_and_no_secret_is_printed_or_stored(
    aws: AwsWorld, tmp_path: Path
) -> None:
    cfg = _config(aws, tmp_path, role_arn=ROLE_ARN, external_id=EXTERNAL_ID, session_name="t1")
    db = tmp_path / "catalog.db"
    proc = _syncd(aws, "-vv", "sync", "--config", str(cfg), "--dataset", "ds", "--db", str(db))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(db) as conn:
        keys = sorted(k for (k,) in conn.execute("SELECT key FROM items"))
    assert keys == OBJECTS
    # the base secret, and every temporary secret or token STS handed out (in the -vv output
    # botocore logs STS's answer: each value must be masked there)
    out = proc.stdout + proc.stderr
    assert aws.secret not in out and aws.secret.encode() not in _catalog_bytes(db)
    for tag in ("SecretAccessKey", "SessionToken"):
        for value in re.findall(rf"<{tag}>([^<]*)</{tag}>", out):
            assert value == "***", f"{tag} printed"
    # every session token moto issues starts so: none is printed anywhere (the S3 requests'
    # X-Amz-Security-Token headers included)
    from moto.sts.utils import SESSION_TOKEN_PREFIX

    assert "<SessionToken>***" in out  # the -vv output did show STS's answer, masked
    assert SESSION_TOKEN_PREFIX not in out
    assert "Traceback" not in out
    # the catalog keeps the integration as written: references and plain values only
    stored = _catalog_bytes(db)
    assert ROLE_ARN.encode() in stored and b"env:ROLES_TEST_KEY_ID" in stored
    assert aws.key_id.encode() not in stored and SESSION_TOKEN_PREFIX.encode() not in stored
    # what the CLI lists of the dataset names the integration, nothing of its credentials
    listed = _syncd(aws, "datasets", "ls", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert aws.secret not in listed.stdout and aws.key_id not in listed.stdout


@pytest.mark.parametrize(
    ("role_arn", "external_id"),
    [(ROLE_ARN, WRONG_EXTERNAL_ID), (WRONG_ROLE_ARN, EXTERNAL_ID)],
    ids=["wrong-external-id", "wrong-role-arn"],
)
def test_a_refused_role_fails_in_one_line_naming_the_role(
    aws: AwsWorld, tmp_path: Path, role_arn: str, external_id: str
) -> None:
    cfg = _config(aws, tmp_path, role_arn=role_arn, external_id=external_id)
    db = tmp_path / "catalog.db"
    proc = _syncd(aws, "sync", "--config", str(cfg), "--dataset", "ds", "--db", str(db))
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert f"cannot assume role {role_arn}: STS AccessDenied" in err
    assert "external_id" in err  # the hint says what to check
    for secret in (aws.secret, external_id, aws.key_id):
        assert secret not in proc.stdout + proc.stderr
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0


async def test_the_role_signs_every_request_and_grants_only_what_it_holds(
    aws: AwsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base user may only assume the role: its own keys list nothing. Through the role,
    listing, HEAD and GET work (what the role's policy grants) and a PUT is refused."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.moto.url)
    fields = _fields(aws, tmp_path)
    base = Integration("base", "s3", fields)
    role = Integration("role", "s3", {**fields, "role_arn": ROLE_ARN, "external_id": EXTERNAL_ID})
    url = aws.moto.url
    async with open_driver(DriverConfig("s3", aws.bucket, endpoint=url, integration=base)) as d:
        with pytest.raises(errors.PermissionDenied):
            [o async for page in d.list() for o in page]
    async with open_driver(DriverConfig("s3", aws.bucket, endpoint=url, integration=role)) as d:
        keys = [o.key async for page in d.list() for o in page]
        assert keys == OBJECTS
        assert (await d.head(OBJECTS[0])).size == len(OBJECTS[0])
        assert b"".join([c async for c in d.get(OBJECTS[1])]) == OBJECTS[1].encode()
        with pytest.raises(errors.PermissionDenied):
            await d.put("new.txt", b"x")


async def test_role_credentials_are_refreshed_before_they_expire_during_a_long_listing(
    aws: AwsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock the test moves: pages listed while the credentials are fresh need one
    AssumeRole; once the clock is inside the mandatory refresh window (150 s before a 900 s
    session ends), the next request waits for a new AssumeRole and is signed with its key.
    Every AssumeRole carries the external ID, the session name and the duration."""
    proxy = RecordingProxy(aws.moto.url)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", proxy.url)
        offset = timedelta(0)

        def clock() -> datetime:
            return datetime.now(UTC) + offset

        fields = {
            "access_key_id": aws.key_id,
            "secret_access_key": aws.secret,
            "role_arn": ROLE_ARN,
            "external_id": EXTERNAL_ID,
            "session_name": "long-run",
            "duration_seconds": "900",
        }
        session = aws_session(fields, label=aws.bucket, clock=clock)
        driver = S3Driver(aws.bucket, endpoint=proxy.url, page_size=2, session=session)
        assert proxy.assume_role_calls() == []  # opening fetches nothing
        pages = driver.list()
        first = await anext(pages)
        second = await anext(pages)
        assert len(proxy.assume_role_calls()) == 1
        _, mandatory = refresh_margins(900)
        offset = timedelta(seconds=900 - mandatory + 5)
        rest = [o async for page in pages for o in page]
        assert [o.key for o in first + second + rest] == OBJECTS
        await driver.close()
        calls = proxy.assume_role_calls()
        assert len(calls) >= 2
        for call in calls:
            assert call["RoleArn"] == ROLE_ARN
            assert call["ExternalId"] == EXTERNAL_ID
            assert call["RoleSessionName"] == "long-run"
            assert call["DurationSeconds"] == "900"
        signers = proxy.signing_keys(f"/{aws.bucket}")
        assert len(signers) == 4  # 7 objects, 2 a page
        assert signers[0] == signers[1] != signers[2]  # the third page: the new key
        assert all(k.startswith("ASIA") for k in signers)  # temporary keys, not the user's
        assert aws.key_id not in signers
    finally:
        proxy.close()


def test_refresh_margins_scale_with_the_session() -> None:
    assert refresh_margins(3600) == (900, 600)  # botocore's own for an hour
    assert refresh_margins(900) == (300, 150)  # not inside the window from the start
    assert refresh_margins(43200) == (900, 600)


async def test_the_sqs_consumer_and_sink_use_the_role(
    aws: AwsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue consumer receives and deletes, the sink sends, all as the role (the base user
    has no SQS permission at all); a refused role is one line naming it."""
    from syncd.config import SinkConfig
    from syncd.daemon.queues.sqs import SqsConsumer
    from syncd.feed.sinks import open_sender, outcome_of

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fields = _fields(aws, tmp_path)
    role = Integration("role", "s3", {**fields, "role_arn": ROLE_ARN, "external_id": EXTERNAL_ID})
    sender = open_sender(SinkConfig("s", "sqs", url=aws.queue_url, integration=role))
    try:
        sender._client.send_message(QueueUrl=aws.queue_url, MessageBody="{}")
    finally:
        sender.close()
    consumer = SqsConsumer("q", aws.queue_url, integration=role, wait_seconds=0)
    messages = consumer._receive()
    assert len(messages) == 1
    assert consumer._delete(messages) == 1

    wrong = Integration(
        "wrong", "s3", {**fields, "role_arn": ROLE_ARN, "external_id": WRONG_EXTERNAL_ID}
    )
    refused = SqsConsumer("q", aws.queue_url, integration=wrong, wait_seconds=0)
    with pytest.raises(Exception) as caught:
        refused._receive()
    text = str(caught.value)
    assert len(text.splitlines()) == 1
    assert f"sqs: cannot assume role {ROLE_ARN}: STS AccessDenied" in text
    assert WRONG_EXTERNAL_ID not in text and aws.secret not in text
    # a sink meeting it pauses (a refusal) instead of retrying for ever
    outcome = outcome_of(caught.value, "sqs sink")
    assert not outcome.ok and not outcome.retry


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "message"),
    [
        ("s3", {"external_id": "abc123"}, "external_id: only used with role_arn"),
        ("s3", {"role_arn": "my-role"}, "is not a role ARN"),
        ("s3", {"role_arn": ROLE_ARN, "duration_seconds": "60"}, "from 900 to 43200"),
        ("s3", {"role_arn": ROLE_ARN, "session_name": "a b"}, "session_name must be"),
        ("azure", {"tenant_id": "t", "client_secret": "env:X"}, "needs tenant_id and client_id"),
        ("azure", {"tenant_id": "t", "client_id": "c"}, "exactly one of client_secret"),
        ("azure", {"tenant_id": "t", "client_id": "c", "client_secret": "s3cr3t-literal"},
         "holds a literal secret"),
        ("azure", {"tenant_id": "t", "client_id": "c", "client_secret": "env:X",
                   "account_key": "env:Y"}, "cannot be combined with account_key"),
        ("gcs", {"impersonate": "not-an-email"}, "is not a service account's email"),
    ],
)  # fmt: skip
def test_role_fields_are_checked_when_the_config_loads(
    kind: str, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Integration("i", kind, fields)
    assert message in str(caught.value)
    assert "s3cr3t-literal" not in str(caught.value)


def test_a_config_file_takes_role_fields_and_a_numeric_duration(tmp_path: Path) -> None:
    from syncd.config import load_config

    cfg = tmp_path / "syncd.toml"
    cfg.write_text(
        f"""
[integrations.r]
type = "s3"
role_arn = "{ROLE_ARN}"
external_id = "{EXTERNAL_ID}"
duration_seconds = 1800

[drivers.d]
type = "s3"
bucket = "b"
integration = "r"

[datasets.ds]
driver = "d"
"""
    )
    integ = load_config(str(cfg))["ds"].driver.integration
    assert integ is not None
    assert integ.fields == {
        "role_arn": ROLE_ARN,
        "external_id": EXTERNAL_ID,
        "duration_seconds": "1800",
    }


# -- TLS on loopback (Entra ID and Azure token credentials speak HTTPS only) ----------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made here; the SDKs trust it through
    ``REQUESTS_CA_BUNDLE`` (both azure-core and MSAL send with requests)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # MSAL signs RS256
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT (Azurite's ``--oauth basic`` checks the claims, not the
    signature, as its README says)."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "2f1e4d3c-aaaa-bbbb-cccc-0123456789ab"
CLIENT_SECRET = "sp-secret-d0-not-print-me"


@dataclass
class TokenService:
    """Stands in for the Microsoft Entra ID token endpoint (the integration's ``authority``): hands
    a storage token to the right client secret, ``invalid_client`` to any other; records
    every token request's form."""

    url: str
    forms: list[dict[str, str]]
    audience: list[str]


@pytest.fixture
def entra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TokenService, Path]]:
    import ssl

    cert, key = _self_signed(tmp_path)
    forms: list[dict[str, str]] = []
    audience = ["https://storage.azure.com"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # MSAL reads the tenant's OpenID configuration first
            base = f"https://127.0.0.1:{self.server.server_address[1]}/{TENANT}"
            self._json(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                },
            )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            forms.append(form | {"path": self.path})
            if form.get("client_secret") != CLIENT_SECRET:
                self._json(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                    },
                )
                return
            now = int(time.time())
            token = _jwt(
                {
                    "aud": audience[0],
                    "iss": f"https://sts.windows.net/{TENANT}/",
                    "tid": TENANT,
                    "appid": CLIENT_ID,
                    "oid": CLIENT_ID,
                    "nbf": now - 60,
                    "iat": now - 60,
                    "exp": now + 3600,
                }
            )
            self._json(200, {"token_type": "Bearer", "expires_in": 3600, "access_token": token})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    try:
        yield TokenService(url, forms, audience), tmp_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def azurite_oauth(entra: tuple[TokenService, Path]) -> Iterator[str]:
    """Azurite over HTTPS with ``--oauth basic``: it takes bearer tokens, checking their
    issuer, audience and lifetime (not their signature). Yields its blob endpoint."""
    import socket
    import ssl

    from tests.emulators import AZURITE_ACCOUNT, _azurite_binary, free_port

    _, tmp = entra
    port = free_port()
    (tmp / "azurite").mkdir()
    log = (tmp / "azurite.log").open("wb")
    proc = subprocess.Popen(
        [
            _azurite_binary(),
            "--blobHost", "127.0.0.1", "--blobPort", str(port),
            "--location", str(tmp / "azurite"),
            "--cert", str(tmp / "cert.pem"), "--key", str(tmp / "key.pem"),
            "--oauth", "basic", "--skipApiVersionCheck", "--silent",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    deadline = time.monotonic() + 60
    try:
        while True:  # up when it answers a TLS handshake
            assert proc.poll() is None, (tmp / "azurite.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Azurite (https) did not come up in 60 s"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                    context.wrap_socket(raw, server_hostname="127.0.0.1").close()
                break
            except OSError:
                time.sleep(0.1)  # polling a starting process, not waiting on a test outcome
        yield f"https://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _sp_config(authority: str, endpoint: str, container: str) -> DriverConfig:
    from tests.emulators import AZURITE_ACCOUNT

    integ = Integration(
        "sp",
        "azure",
        {
            "account_name": AZURITE_ACCOUNT,
            "authority": authority,
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": "env:ROLES_AZ_SECRET",
        },
    )
    return DriverConfig(type="azure", bucket=container, endpoint=endpoint, integration=integ)


def _azurite_container(endpoint: str) -> str:
    from azure.storage.blob import BlobServiceClient

    from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY

    container = unique_bucket()
    service = BlobServiceClient(
        endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    service.create_container(container).upload_blob("a.txt", b"a")
    return container


async def test_an_azure_service_principal_gets_a_token_and_lists_with_it(
    entra: tuple[TokenService, Path], azurite_oauth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azure-identity's ClientSecretCredential asks the token endpoint for a storage token
    with the client's id and secret (checked here); Azurite then takes the token (a token of
    another audience is refused, so it is the token that lets the listing through)."""
    service, _ = entra
    monkeypatch.setenv("ROLES_AZ_SECRET", CLIENT_SECRET)
    container = _azurite_container(azurite_oauth)
    async with open_driver(_sp_config(service.url, azurite_oauth, container)) as driver:
        assert [o.key async for page in driver.list() for o in page] == ["a.txt"]
    assert len(service.forms) == 1
    form = service.forms[0]
    assert form["path"] == f"/{TENANT}/oauth2/v2.0/token"
    assert form["grant_type"] == "client_credentials"
    assert form["client_id"] == CLIENT_ID and form["client_secret"] == CLIENT_SECRET
    assert form["scope"] == "https://storage.azure.com/.default"

    service.audience[0] = "https://management.azure.com"  # a token for something else
    async with open_driver(_sp_config(service.url, azurite_oauth, container)) as driver:
        with pytest.raises(errors.Unauthenticated):
            [o async for page in driver.list() for o in page]


async def test_a_wrong_client_secret_is_one_line_without_the_secret(
    entra: tuple[TokenService, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _ = entra
    monkeypatch.setenv("ROLES_AZ_SECRET", "not-the-secret-either")
    endpoint = "https://127.0.0.1:9/devstoreaccount1"  # never reached: no token, no request
    async with open_driver(_sp_config(service.url, endpoint, "c")) as driver:
        with pytest.raises(errors.Unauthenticated) as caught:
            [o async for page in driver.list() for o in page]
    text = str(caught.value)
    assert len(text.splitlines()) == 1
    assert "not-the-secret-either" not in text
    assert len(service.forms) == 1  # asked once, refused, not retried


def test_an_unreadable_certificate_is_a_config_error_naming_its_path(tmp_path: Path) -> None:
    from providers.credentials import azure_credential

    missing = tmp_path / "nope.pem"
    fields = {"tenant_id": TENANT, "client_id": CLIENT_ID, "certificate_path": str(missing)}
    with pytest.raises(ConfigError) as caught:
        azure_credential(fields, what="integration 'sp'")
    assert str(missing) in str(caught.value) and "cannot be read" in str(caught.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    fields["certificate_path"] = str(garbage)
    with pytest.raises(ConfigError) as caught:
        azure_credential(fields, what="integration 'sp'")
    assert "not a PEM or PKCS12 certificate" in str(caught.value)
    assert "not a key" not in str(caught.value)


async def test_an_azure_certificate_principal_signs_its_assertion_with_the_certificate(
    entra: tuple[TokenService, Path], azurite_oauth: str
) -> None:
    """CertificateCredential sends a client assertion (a JWT signed with the certificate's
    key, its thumbprint in the header) instead of a secret."""
    service, tmp = entra
    combined = tmp / "sp.pem"  # azure-identity wants the key and the certificate in one file
    combined.write_bytes((tmp / "key.pem").read_bytes() + (tmp / "cert.pem").read_bytes())
    container = _azurite_container(azurite_oauth)
    cfg = _sp_config(service.url, azurite_oauth, container)
    fields = {k: v for k, v in cfg.integration.fields.items() if k != "client_secret"}
    integ = Integration("cert", "azure", {**fields, "certificate_path": str(combined)})
    cfg = DriverConfig(type="azure", bucket=container, endpoint=azurite_oauth, integration=integ)
    with pytest.raises(errors.Unauthenticated):
        # the stand-in hands tokens only for the secret: the assertion reached it instead
        async with open_driver(cfg) as driver:
            [o async for page in driver.list() for o in page]
    form = service.forms[-1]
    assert form["client_assertion_type"] == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    )
    header = json.loads(base64.urlsafe_b64decode(form["client_assertion"].split(".")[0] + "=="))
    assert "x5t" in header or "x5t#S256" in header
    assert "client_secret" not in form


def test_sdk_warnings_of_a_refused_role_or_principal_are_not_repeated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """botocore's and azure-identity's own warnings about the failures the callers report in
    one line are dropped (botocore's carried a traceback); others pass."""
    import logging

    from providers.credentials import _role_failure

    failure = _role_failure(TimeoutError(), ROLE_ARN, "s3", "b")
    botocore_log = logging.getLogger("botocore.credentials")
    identity_log = logging.getLogger("azure.identity._internal.get_token_mixin")
    with caplog.at_level(logging.WARNING):
        try:
            raise failure
        except Exception:
            msg = "Refreshing temporary credentials failed during %s refresh period."
            botocore_log.warning(msg, "mandatory", exc_info=True)
            botocore_log.warning(msg, "advisory", exc_info=True)
        identity_log.warning("%s.%s failed: %s", "ClientSecretCredential", "get_token", "x")
        identity_log.warning("%s.%s failed: %s", "ManagedIdentityCredential", "get_token", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"refreshing role credentials failed, the current ones stay in use: {failure}",
        "ManagedIdentityCredential.get_token failed: y",
    ]
    assert all(r.exc_info is None for r in caplog.records[:1])


# -- GCP impersonation -------------------------------------------------------------------------

TARGET_SA = "reader@bucket-owner.iam.gserviceaccount.com"


@dataclass
class GoogleStandIn:
    """Stands in for Google's OAuth token endpoint (the source service account's
    ``token_uri``) and the IAM credentials API's ``generateAccessToken``: the source gets
    ``source-token``; the target's token is handed only to a request carrying it, unless
    ``refuse`` is set (then 403 PERMISSION_DENIED, as IAM answers a caller without
    roles/iam.serviceAccountTokenCreator)."""

    url: str
    token_requests: list[dict[str, str]]
    impersonations: list[tuple[str, str, dict[str, Any]]]
    refuse: list[bool]


@pytest.fixture
def google_stand_in() -> Iterator[GoogleStandIn]:
    token_requests: list[dict[str, str]] = []
    impersonations: list[tuple[str, str, dict[str, Any]]] = []
    refuse = [False]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self.path == "/token":
                token_requests.append({k: v[0] for k, v in parse_qs(raw).items()})
                self._json(200, {"access_token": "source-token", "expires_in": 3600})
                return
            auth = self.headers.get("Authorization", "")
            impersonations.append((self.path, auth, json.loads(raw)))
            if refuse[0] or auth != "Bearer source-token":
                self._json(
                    403,
                    {
                        "error": {
                            "code": 403,
                            "message": "Permission 'iam.serviceAccounts.getAccessToken' denied",
                            "status": "PERMISSION_DENIED",
                        }
                    },
                )
                return
            expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._json(200, {"accessToken": "impersonated-token", "expireTime": expires})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield GoogleStandIn(
            f"http://127.0.0.1:{server.server_address[1]}", token_requests, impersonations, refuse
        )
    finally:
        server.shutdown()
        server.server_close()


async def test_gcp_impersonation_asks_iam_for_the_target_token_and_the_driver_sends_it(
    google_stand_in: GoogleStandIn, fake_gcs: Emulator, tmp_path: Path
) -> None:
    """The source service account gets its token, calls generateAccessToken on the target
    with it (scope and lifetime checked), and every storage request then carries the
    target's token (read at a recording proxy in front of fake-gcs-server, which takes any)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from providers.credentials import gcp_credentials
    from providers.gcs import SCOPES, GCSDriver
    from tests.conftest import write_service_account

    bucket = unique_bucket()
    admin = storage.Client(
        project="t",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake_gcs.url},
    )
    admin.create_bucket(bucket).blob("a.txt").upload_from_string(b"a")
    source = write_service_account(tmp_path / "sa.json", f"{google_stand_in.url}/token")
    fields = {"credentials_file": str(source), "impersonate": TARGET_SA}
    credentials = gcp_credentials(fields, scopes=SCOPES, iam_endpoint=google_stand_in.url)
    proxy = RecordingProxy(fake_gcs.url)
    try:
        driver = GCSDriver(bucket, endpoint=proxy.url, credentials=credentials)
        try:
            assert [o.key async for page in driver.list() for o in page] == ["a.txt"]
            assert (await driver.head("a.txt")).size == 1
            asked = len(google_stand_in.impersonations)
            for _ in range(3):  # the target's token is kept until it nears its expiry
                assert (await driver.head("a.txt")).size == 1
            assert len(google_stand_in.impersonations) == asked
        finally:
            await driver.close()
        with proxy.lock:
            # google-auth writes the header name in lower case
            storage_auth = {
                next((v for k, v in s.headers.items() if k.lower() == "authorization"), None)
                for s in proxy.seen
            }
        assert storage_auth == {"Bearer impersonated-token"}, [
            (s.method, s.path) for s in proxy.seen
        ]
    finally:
        proxy.close()
    # the source's own token: a JWT-bearer grant signed with its key (never the key itself)
    assert google_stand_in.token_requests
    for form in google_stand_in.token_requests:
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert google_stand_in.impersonations
    for path, auth, body in google_stand_in.impersonations:
        assert path == f"/v1/projects/-/serviceAccounts/{TARGET_SA}:generateAccessToken"
        assert auth == "Bearer source-token"
        assert body["scope"] == list(SCOPES) and body["lifetime"] == "3600s"


async def test_a_refused_impersonation_is_one_line_without_the_key(
    google_stand_in: GoogleStandIn, fake_gcs: Emulator, tmp_path: Path
) -> None:
    from providers.credentials import gcp_credentials
    from providers.gcs import SCOPES, GCSDriver
    from tests.conftest import private_key_of, write_service_account

    google_stand_in.refuse[0] = True
    source = write_service_account(tmp_path / "sa.json", f"{google_stand_in.url}/token")
    fields = {"credentials_file": str(source), "impersonate": TARGET_SA}
    credentials = gcp_credentials(fields, scopes=SCOPES, iam_endpoint=google_stand_in.url)
    driver = GCSDriver(unique_bucket(), endpoint=fake_gcs.url, credentials=credentials)
    try:
        with pytest.raises(errors.Unauthenticated) as caught:
            [o async for page in driver.list() for o in page]
    finally:
        await driver.close()
    text = str(caught.value)
    assert len(text.splitlines()) == 1
    assert private_key_of(str(source))[:64] not in text and "source-token" not in text


def test_open_driver_and_the_pubsub_clients_impersonate_through_the_one_function(
    tmp_path: Path, google_stand_in: GoogleStandIn
) -> None:
    """Wiring (no request is made): the GCS driver from a config, the Pub/Sub consumer's and
    the sink's clients all hold google-auth impersonated credentials for the target."""
    from google.auth import impersonated_credentials

    from syncd.config import SinkConfig
    from syncd.daemon.queues.pubsub import PubSubConsumer
    from syncd.feed.sinks import open_sender
    from tests.conftest import write_service_account

    source = write_service_account(tmp_path / "sa.json", f"{google_stand_in.url}/token")
    integ = Integration("imp", "gcs", {"credentials_file": str(source), "impersonate": TARGET_SA})
    driver = open_driver(
        DriverConfig(type="gcs", bucket="b", endpoint="http://127.0.0.1:9", integration=integ)
    )
    held = [driver._client._credentials]
    consumer = PubSubConsumer("p", "projects/p/subscriptions/s", integration=integ)
    subscriber = consumer._client()
    held.append(subscriber._transport._credentials)
    sender = open_sender(SinkConfig("s", "pubsub", topic="projects/p/topics/t", integration=integ))
    held.append(sender._client._transport._credentials)
    for credentials in held:
        assert isinstance(credentials, impersonated_credentials.Credentials)
        assert credentials.service_account_email == TARGET_SA
    subscriber.close()
    sender.close()
    assert google_stand_in.impersonations == []


def test_the_azure_queue_clients_use_the_service_principal(tmp_path: Path) -> None:
    """Wiring (no request is made): the Storage Queue consumer's and sink's clients hold the
    same service-principal credential the blob driver gets. No Azurite queue here takes
    bearer tokens (that needs its own HTTPS instance): the token flow itself is the blob
    tests' above."""
    from syncd.daemon.queues.azure_queue import _clients

    os.environ["ROLES_AZ_SECRET"] = CLIENT_SECRET
    integ = _sp_config("https://127.0.0.1:9", "https://127.0.0.1:9/a", "c").integration
    queue, poison = _clients("events", None, integ)
    for client in (queue, poison):
        assert type(client.credential).__name__ == "_Principal"
        assert client.url.startswith("https://devstoreaccount1.queue.core.windows.net/")
    queue.close()
    poison.close()
