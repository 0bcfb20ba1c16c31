"""The HTTP API under random and mutated input (issue 12): every request is answered, with a
JSON ``{"error": ...}`` and a 4xx status when the input is wrong, never a 500.

One real daemon (``syncd run``'s :class:`~syncd.daemon.service.Daemon`) serves the whole
module, on its own thread and event loop so the examples can use a blocking client: a local
folder dataset whose files have hostile (but legal) names, and an S3 dataset on moto, so that
events lacking a size or ETag are completed with a real HEAD of whatever key they name.

Inputs: mutated fixture events (as in ``test_events_fuzz``), events naming random keys in the
S3 dataset's bucket, random bytes as bodies; random ``limit``, ``prefix``, ``cursor`` and
``ttl`` values, percent-encoded bytes that are not UTF-8 included; random dataset names and
item keys in the path, for every route.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import boto3
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.server.routes import encode_cursor
from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port
from tests.strategies import (
    DELETE,
    deletable,
    hostile_values,
    json_values,
    keys,
    mutated,
    positions,
)
from tests.test_events_fuzz import PAYLOADS
from tests.waiting import wait_for

TOKEN = "fuzz-token-0123456789abcdef"
#: what a wrong input may be answered with; 500 never
ANSWERS = {200, 202, 302, 400, 404, 405, 409, 413}
#: local files with names a folder can hold (NFC and NFD of one name are two files)
FILES = [
    "plain.txt",
    "with space/and+plus.txt",
    "per%cent/_und*er?[x].txt",
    unicodedata.normalize("NFC", "café.txt"),
    unicodedata.normalize("NFD", "café.txt"),
    "ctrl\x01\x7fname",
    "x/url",
    "deep/" + "d/" * 50 + "end",
    "é" * 120,  # 240 bytes: within a file name's 255
]
OBJECTS = ["raw/a.jpg", "raw/b c.jpg", "raw/ü+%.png"]


@dataclass
class Served:
    base: str
    session: requests.Session
    bucket: str

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One request with the token; fails the test on a 500 or a non-JSON error."""
        resp = self.session.request(
            method, self.base + path, timeout=60, allow_redirects=False, **kw
        )
        assert resp.status_code in ANSWERS, (method, path, resp.status_code, resp.text[:300])
        if resp.status_code >= 400:
            body = resp.json()
            assert set(body) == {"error"} and isinstance(body["error"], str), body
            assert "\n" not in body["error"] and "Traceback" not in body["error"]
        return resp


@pytest.fixture(scope="module")
def served(moto: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    src = tmp / "src"
    for name in FILES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    bucket = unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=bucket)
    for key in OBJECTS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    port = free_port()
    (tmp / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        f'[drivers.moto]\ntype = "s3"\nbucket = "{bucket}"\nendpoint = "{moto.url}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\ninterval = 3600\n'
        '[datasets.objects]\ndriver = "moto"\ninterval = 3600\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    config = load_daemon_config(str(tmp / "syncd.toml"))
    loop = asyncio.new_event_loop()
    daemon: list[Daemon] = []
    failed: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            d = Daemon(config, str(tmp / "c.db"), api_token=TOKEN, poll_seconds=1)
            daemon.append(d)
            await d.run()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="fuzz-daemon", daemon=True)
    thread.start()
    wait_for(lambda: failed or (daemon and daemon[0].ready.is_set()), "the daemon to start")
    assert not failed, failed
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    api = Served(f"http://127.0.0.1:{daemon[0].port}", session, bucket)

    def synced() -> bool:
        rows = api.request("GET", "/api/v1/datasets").json()["datasets"]
        counts = {r["name"]: (r["items"], r["schedule"]["running"]) for r in rows}
        return counts == {"files": (len(FILES), False), "objects": (len(OBJECTS), False)}

    wait_for(synced, "the first reconciles")
    yield api
    session.close()
    loop.call_soon_threadsafe(daemon[0].stop.set)
    thread.join(60)
    assert not thread.is_alive() and not failed, failed


# -- event bodies --------------------------------------------------------------------------

mutations = json_values | hostile_values | st.just(DELETE)


@settings(max_examples=200)
@given(st.sampled_from(sorted(PAYLOADS)), st.data(), mutations)
def test_mutated_events(served: Served, name: str, data: st.DataObject, new: Any) -> None:
    payload = PAYLOADS[name]
    where = data.draw(st.sampled_from(positions(payload)), label="position")
    if new is DELETE and not deletable(where):
        new = None
    try:
        body = json.dumps(mutated(payload, where, new), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
    except (TypeError, ValueError):
        return
    resp = served.request("POST", "/api/v1/events", data=body)
    assert resp.status_code in (200, 400)


#: what the fuzzing found answered 500 before the parser checked what the catalog stores
FOUND = {
    "size past 2**63-1": ("s3-put.json", ("Records", 0, "s3", "object", "size"), 2**63),
    "negative size": ("eventbridge-object-created.json", ("detail", "object", "size"), -1),
    "etag an object": ("eventbridge-object-created.json", ("detail", "object", "etag"), {}),
    "contentType a list": ("azure-cloudevent-created.json", ("data", "contentType"), [1]),
    "key a lone surrogate": ("gcs-cloudevent-finalized.json", ("data", "name"), "\udc80"),
    "time past the calendar": (
        "s3-put.json",
        ("Records", 0, "eventTime"),
        "9999-12-31T23:59:59-12:00",
    ),
}


@pytest.mark.parametrize("case", FOUND)
def test_events_the_fuzzing_found(served: Served, case: str) -> None:
    name, where, new = FOUND[case]
    body = json.dumps(mutated(PAYLOADS[name], where, new))  # \udc80 escaped, as JSON allows
    resp = served.request("POST", "/api/v1/events", data=body)
    assert resp.status_code == 400


def s3_event(bucket: str, key: str, *, complete: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/")}
    if complete:
        obj |= {"size": 3, "eTag": "e" * 32}
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-24T00:00:00.000Z",
                "s3": {"bucket": {"name": bucket}, "object": obj},
            }
        ]
    }


@settings(max_examples=100)
@given(keys, st.booleans())
def test_events_naming_random_keys(served: Served, key: str, complete: bool) -> None:
    """An event for the S3 dataset's bucket naming any key: applied, or (without a size, so
    the daemon HEADs the key on moto and finds nothing) dropped as stale; never a 500. A key
    no object can have (a NUL byte, over 1,024 bytes with the prefix) is refused: 400."""
    resp = served.request(
        "POST", "/api/v1/events", json=s3_event(served.bucket, "raw/" + key, complete=complete)
    )
    if "\x00" in key or len(("raw/" + key).encode()) > 1024:
        assert resp.status_code == 400, resp.text
        return
    assert resp.status_code == 200, resp.text
    applied = resp.json()["applied"]
    assert (
        applied["created"] + applied["updated"] + applied["unchanged"] + applied["stale"] == 1
        or applied["unrouted"] == 1
    ), applied
    if complete and key.startswith("/") is False:
        item = served.request("GET", f"/api/v1/datasets/objects/items/{quote('raw/' + key)}")
        assert item.status_code == 200 and item.json()["key"] == "raw/" + key


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_random_bodies(served: Served, body: bytes) -> None:
    resp = served.request("POST", "/api/v1/events", data=body)
    assert resp.status_code in (200, 400)


# -- query and path parameters -------------------------------------------------------------

#: a query value as a client may send it: any text, or raw bytes percent-encoded (not UTF-8)
query_values = st.one_of(
    st.text(max_size=40),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "0", "1", "1000", "1001", " 5", "5 ", "٥", "1e3", "0x10", "-1"]),
    st.binary(max_size=12).map(lambda b: quote(b, safe="")),
    st.sampled_from(["%FF", "%ED%A0%80", "%C3", "%00", "%", "%%%", "%zz"]),
)
#: cursors as the API writes them (over any key, one with a lone surrogate included: its bytes
#: are not UTF-8), and bent ones
cursors = st.one_of(
    query_values,
    st.text(max_size=30).map(encode_cursor),
    st.tuples(keys, st.sampled_from(["\ud800", ""])).map(
        lambda t: (
            base64.urlsafe_b64encode((t[0] + t[1]).encode("utf-8", "surrogatepass"))
            .decode()
            .rstrip("=")
        )
    ),
    st.text(max_size=20).map(encode_cursor).map(lambda c: c + "="),
)


def _query(**params: str) -> str:
    # values given already percent-encoded where they are raw bytes; the rest encoded here
    return "&".join(
        f"{k}={v if v.startswith('%') or '%' in v[:3] else quote(v, safe='')}"
        for k, v in params.items()
    )


@settings(max_examples=250)
@given(
    st.sampled_from(["files", "objects"]),
    st.fixed_dictionaries(
        {},
        optional={"limit": query_values, "prefix": query_values | keys, "cursor": cursors},
    ),
)
def test_item_listing_queries(served: Served, dataset: str, params: dict[str, str]) -> None:
    resp = served.request("GET", f"/api/v1/datasets/{dataset}/items?{_query(**params)}")
    if resp.status_code == 200:
        body = resp.json()
        assert isinstance(body["items"], list)


@settings(max_examples=100)
@given(st.sampled_from(["files", "objects"]), query_values, query_values)
def test_runs_and_url_queries(served: Served, dataset: str, limit: str, ttl: str) -> None:
    served.request("GET", f"/api/v1/datasets/{dataset}/runs?{_query(limit=limit)}")
    served.request("GET", f"/api/v1/datasets/{dataset}/items/plain.txt/url?{_query(ttl=ttl)}")


#: a path segment: any text (percent-encoded here), raw bytes, or a hostile key
path_values = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).map(lambda s: quote(s, safe="")),
    keys.map(lambda k: quote(k, safe="/")),
    st.binary(min_size=1, max_size=12).map(lambda b: quote(b, safe="")),
    st.sampled_from(
        ["%FF", "%ED%A0%80", "..", "%2e%2e", "/".join(["a", "..", "b"]), "%00", "%", "~"]
    ),
)


@settings(max_examples=250)
@given(
    st.one_of(st.sampled_from(["files", "objects"]), path_values),
    path_values,
    st.sampled_from(["", "/url", "/runs", "/items", "/sync"]),
)
def test_dataset_names_and_item_keys_in_paths(
    served: Served, name: str, key: str, route: str
) -> None:
    if route == "/sync":
        served.request("POST", f"/api/v1/datasets/{name}/sync")
    elif route in ("/runs", "/items"):
        served.request("GET", f"/api/v1/datasets/{name}{route}")
    else:
        served.request("GET", f"/api/v1/datasets/{name}/items/{key}{route}")
    served.request("GET", f"/api/v1/datasets/{name}")


@pytest.mark.parametrize("name", FILES)
def test_every_hostile_file_name_is_reachable_by_its_key(served: Served, name: str) -> None:
    """The NFC and NFD names are two items, each found under its own key, never the other's."""
    resp = served.request("GET", f"/api/v1/datasets/files/items/{quote(name, safe='')}")
    assert resp.status_code == 200 and resp.json()["key"] == name
    listed = served.request(
        "GET", f"/api/v1/datasets/files/items?limit=1000&prefix={quote(name, safe='')}"
    ).json()["items"]
    assert name in [i["key"] for i in listed]
