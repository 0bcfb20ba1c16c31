"""How the S3 driver sets up its botocore client: the checksum setting follows the scheme of
the endpoint the client really uses, and its timestamp parser returns what botocore's own
would. No requests are sent: a client is made without touching the network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import botocore.utils
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.s3 import S3Driver, _plain_http, _timestamp

ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return monkeypatch


CONFIG_FILE = """[default]
region = us-east-1
services = local-s3

[services local-s3]
s3 =
  endpoint_url = {url}
"""


@pytest.mark.parametrize(
    ("env", "config_url", "endpoint", "http"),
    [
        ({}, None, None, False),  # AWS itself: HTTPS
        ({}, None, "http://127.0.0.1:9000", True),
        ({}, None, "https://minio.example:9000", False),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, None, None, True),
        ({"AWS_ENDPOINT_URL": "https://r2.example"}, None, None, False),
        # the service's own variable wins over the general one, both ways
        (
            {"AWS_ENDPOINT_URL": "https://r2.example", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1"},
            None,
            None,
            True,
        ),
        (
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_S3": "https://r2.example"},
            None,
            None,
            False,
        ),
        # the driver's own endpoint wins over the environment
        ({"AWS_ENDPOINT_URL": "https://r2.example"}, None, "http://127.0.0.1:9000", True),
        (
            {
                "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
            },
            None,
            None,
            False,
        ),
        ({}, "http://127.0.0.1:9000", None, True),  # the config file's services section
        ({}, "https://minio.example", None, False),
    ],
)
def test_checksum_setting_follows_the_scheme_of_the_endpoint_used(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    env: dict[str, str],
    config_url: str | None,
    endpoint: str | None,
    http: bool,
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    if config_url is not None:
        (tmp_path / "config").write_text(CONFIG_FILE.format(url=config_url))
    driver = S3Driver("bucket", endpoint=endpoint)
    used = driver._client.meta.endpoint_url
    assert used.startswith("http:") is http, used
    setting = driver._client.meta.config.request_checksum_calculation
    # plain HTTP: the signed SHA-256 covers the body, no CRC32 pass; HTTPS: botocore's own
    assert (setting == "when_required") is http, (used, setting)
    # and it was known before the client was made: one client, not one made twice
    assert _plain_http(driver._session, endpoint) is http


def _same(ours: datetime, botocores: datetime) -> None:
    assert ours.tzinfo is not None
    assert ours == botocores
    assert ours.utcoffset() == botocores.utcoffset()


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC),
    )
)
def test_timestamp_parser_agrees_with_botocores_on_what_s3_sends(moment: datetime) -> None:
    listing = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    _same(_timestamp(listing), botocore.utils.parse_timestamp(listing))
    header = format_datetime(moment.replace(microsecond=0), usegmt=True)
    _same(_timestamp(header), botocore.utils.parse_timestamp(header))


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-03T10:26:51Z",
        "2026-12-03T10:26:51.123456Z",
        "2026-12-03T10:26:51+01:00",  # not a shape S3 sends: botocore's parser
        "2026-12-03 10:26:51 GMT",
        "Thu, 03 Dec 2026 10:26:51 +0000",
        "Thu, 03 Dec 2026 10:26:51 GMT",
        "1764757611",
        1764757611,
        1764757611.5,
    ],
)
def test_timestamp_parser_agrees_with_botocores_on_other_shapes(value: str | float) -> None:
    _same(_timestamp(value), botocore.utils.parse_timestamp(value))


def test_timestamp_parser_leaves_what_it_cannot_read_to_botocore() -> None:
    with pytest.raises(ValueError):
        botocore.utils.parse_timestamp("not a dateZ")
    with pytest.raises(ValueError):
        _timestamp("not a dateZ")
    assert _timestamp("Thu, 03 Dec 2026 10:26:51 GMT") - _timestamp(
        "2026-12-03T10:26:50Z"
    ) == timedelta(seconds=1)
