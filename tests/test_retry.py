"""Retries against real emulators behind a fault-injecting HTTP proxy on loopback.

The proxy answers the first N requests with the provider's own throttling error (or drops the
connection) and forwards the rest, byte for byte, to the emulator. The SDKs are not touched:
what is tested is the whole stack, SDK included, meeting a throttling service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from providers import Throttled, TransientError, Unauthenticated
from providers.azure import AzureBlobDriver
from providers.gcs import GCSDriver
from providers.retry import RetryPolicy
from providers.s3 import S3Driver
from tests.conftest import Backend, RejectingTokenService
from tests.emulators import AZURITE_ACCOUNT
from tests.proxy import FaultProxy

FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.05)

THROTTLE = {
    "s3": (
        503,
        {"Content-Type": "application/xml"},
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    ),
    "gcs": (
        429,
        {"Content-Type": "application/json"},
        b'{"error": {"code": 429, "message": "rate limit exceeded"}}',
    ),
    "azure": (
        503,
        {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"},
        b"<?xml version='1.0' encoding='utf-8'?><Error><Code>ServerBusy</Code>"
        b"<Message>The server is busy.</Message></Error>",
    ),
}


@pytest.fixture
def cloud(backend: Backend) -> Backend:
    if backend.name == "local":
        pytest.xfail("local folders have no network to fail; nothing to retry")
    return backend


@pytest.fixture
def proxied(cloud: Backend) -> Iterator[tuple[FaultProxy, object]]:
    bucket = cloud.new_bucket()
    proxy = FaultProxy(cloud.emulator.url)
    if cloud.name == "s3":
        driver = S3Driver(bucket, endpoint=proxy.url, retry=FAST)
    elif cloud.name == "gcs":
        driver = GCSDriver(bucket, endpoint=proxy.url, retry=FAST)
    else:
        conn = cloud.emulator.extra["connection_string"].replace(cloud.emulator.url, proxy.url)
        assert AZURITE_ACCOUNT in conn
        driver = AzureBlobDriver(bucket, connection_string=conn, retry=FAST)
    yield proxy, driver
    proxy.close()


LIST_MARK = {"s3": "list-type=2", "gcs": "/o?", "azure": "comp=list"}


def list_calls(proxy: FaultProxy, provider: str) -> int:
    """Listing requests the proxy saw, once it has finished handling every request (a client
    may return before the server side is done). google-cloud-storage follows a failed listing
    with one bucket GET of its own (a lookup for its error message, not a retry), so count by
    path."""
    proxy.wait_idle()
    with proxy.lock:
        return sum(LIST_MARK[provider] in line for line in proxy.log)


async def listed(driver) -> list[str]:
    return [o.key async for page in driver.list() for o in page]


async def test_throttling_is_retried_until_it_passes(cloud: Backend, proxied) -> None:
    proxy, driver = proxied
    await driver.put("one", b"1")
    # only listings fail: google-cloud-storage follows a failed listing with a bucket GET of
    # its own, which must not use up a failure meant for the listing
    proxy.arm(fail=2, reply=THROTTLE[cloud.name], only=LIST_MARK[cloud.name])
    assert await listed(driver) == ["one"]
    assert list_calls(proxy, cloud.name) == 3  # two throttled, one through


async def test_throttling_gives_up_after_the_policy(cloud: Backend, proxied) -> None:
    proxy, driver = proxied
    proxy.arm(fail=100, reply=THROTTLE[cloud.name])
    with pytest.raises(Throttled) as info:
        await listed(driver)
    assert list_calls(proxy, cloud.name) == FAST.attempts, proxy.log
    assert "\n" not in str(info.value) and cloud.name in str(info.value)


async def test_connection_reset_is_retried(cloud: Backend, proxied) -> None:
    proxy, driver = proxied
    await driver.put("two", b"2")
    proxy.arm(fail=1, reply=None, only=LIST_MARK[cloud.name])
    assert await listed(driver) == ["two"]
    assert list_calls(proxy, cloud.name) == 2


async def test_connection_reset_gives_up_as_transient(cloud: Backend, proxied) -> None:
    proxy, driver = proxied
    proxy.arm(fail=100, reply=None)
    with pytest.raises(TransientError):
        await listed(driver)
    assert list_calls(proxy, cloud.name) == FAST.attempts


async def test_authentication_errors_are_never_retried(backend: Backend) -> None:
    if backend.name == "local":
        pytest.xfail("local folders have no credentials to get wrong")
    if backend.name == "gcs":
        # rejected at the token exchange, before any storage request: count token requests
        RejectingTokenService.requests = 0
        driver = GCSDriver(
            backend.new_bucket(),
            endpoint=backend.emulator.url,
            credentials_file=backend.env["SYNCD_TEST_BAD_SA"],
            retry=FAST,
        )
        with pytest.raises(Unauthenticated):
            await listed(driver)
        # one exchange for the listing, and at most one more for the bucket lookup that
        # google-cloud-storage makes on its own after a failed listing; a retry by syncd
        # would make it FAST.attempts or more
        assert 1 <= RejectingTokenService.requests <= 2 < FAST.attempts
        return
    if backend.name == "s3":
        proxy = FaultProxy(backend.auth_emulator.url)
        driver = S3Driver(
            "any-bucket",
            endpoint=proxy.url,
            retry=FAST,
            access_key_id="AKIAWRONG",
            secret_access_key="wrong",
        )
    else:
        proxy = FaultProxy(backend.emulator.url)
        conn = os.environ["SYNCD_TEST_BAD_AZURE_CONN"].replace(backend.emulator.url, proxy.url)
        driver = AzureBlobDriver(backend.new_bucket(), connection_string=conn, retry=FAST)
    try:
        with pytest.raises(Unauthenticated):
            await listed(driver)
        assert list_calls(proxy, backend.name) == 1
    finally:
        proxy.close()


async def test_a_read_whose_first_request_is_reset_is_retried(cloud: Backend, proxied) -> None:
    """A read (``Driver.get``/``read``) whose first request meets a dropped connection (a
    pooled keep-alive connection the server has reset: what failed
    test_pull_push.py's final read against fake-gcs-server under load) is sent again, as any
    other request: nothing of the object was consumed yet."""
    proxy, driver = proxied
    await driver.put("reset-me.bin", b"the bytes")
    proxy.arm(fail=1, reply=None, only="reset-me.bin")
    assert await driver.read("reset-me.bin") == b"the bytes"
    proxy.wait_idle()
    assert proxy.fail == 0  # the reset was given
