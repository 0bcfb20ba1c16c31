"""schemathesis against the OpenAPI document and a real running API (issue 12).

A daemon (scheduler, catalog thread, server) runs in a thread of its own with a catalog holding
one dataset of a local folder; schemathesis generates requests for every operation of
``syncd/server/openapi.yaml``, sends them over HTTP with the bearer token, and runs its checks:
no 5xx, and every status code, content type, header and body is the one the document declares.

Bounded and reproducible: a fixed number of examples per operation, derandomized (the same
examples every run). Its ``ignored_auth`` check sends a no-token and a wrong-token probe per
operation, which the wrong-token lockout would rightly answer with 429 after five operations,
so this daemon gets a lockout with a limit no run reaches; the lockout itself is proven in
``tests/test_api_hardening.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.generation.meta import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.server import routes
from syncd.server.lockout import AuthLockout
from tests.emulators import free_port

TOKEN = "schema-token-0123456789abcdef"
EXAMPLES = 60
KEYS = ["a.txt", "dir/b c.txt", "dir/sub/ünï.txt", "x/url", "z" * 200 + ".bin"]

schema = schemathesis.openapi.from_path(Path(routes.__file__).parent / "openapi.yaml")


@schema.hook("flatmap_path_parameters")
def _the_real_dataset_too(context: object, path_parameters: dict | None) -> st.SearchStrategy:
    """Random names and keys only find 404s: as often, aim at the dataset and its items."""
    if not path_parameters:
        return st.just(path_parameters)
    real = dict(path_parameters)
    if "name" in real:
        real["name"] = "files"
    if "key" in real:
        return st.sampled_from(KEYS).map(lambda key: {**real, "key": key}) | st.just(
            path_parameters
        )
    return st.sampled_from([real, path_parameters])


@schema.hook("map_query")
def _no_long_polls(context: object, query: dict | None) -> dict | None:
    """A change-log request with ``wait`` holds its answer up to a minute when nothing
    changes; the long poll is tested in tests/test_changes.py, here it would only slow every
    example down."""
    if query and "wait" in query:
        query["wait"] = 0
    return query


class ThreadedDaemon:
    """A :class:`Daemon` on its own event loop in a thread; ``url`` once it serves."""

    def __init__(self, config_path: Path, db: str) -> None:
        self.config_path, self.db = config_path, db
        self.started = threading.Event()
        self.url = ""
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: Daemon | None = None
        self._thread = threading.Thread(target=self._main, name="schema-daemon", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by start()
            self.error = exc
        finally:
            self.started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = load_daemon_config(str(self.config_path))
        self._daemon = Daemon(
            config,
            self.db,
            api_token=TOKEN,
            poll_seconds=1,
            api_lockout=AuthLockout(limit=1_000_000),
        )
        task = asyncio.create_task(self._daemon.run())
        ready = asyncio.create_task(self._daemon.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        self.url = f"http://127.0.0.1:{self._daemon.port}"
        self.started.set()
        await task

    def start(self) -> None:
        self._thread.start()
        assert self.started.wait(120), "the daemon did not start within 120 s"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._daemon is not None:
            self._loop.call_soon_threadsafe(self._daemon.stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the daemon did not stop within 60 s"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("schema")
    src = tmp / "src"
    for key in KEYS:
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_text(key)
    config = tmp / "syncd.toml"
    config.write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f"[server]\nport = {free_port()}\n"
    )
    daemon = ThreadedDaemon(config, str(tmp / "c.db"))
    daemon.start()
    try:
        yield daemon.url
    finally:
        daemon.stop()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_and_never_fails(case: schemathesis.Case, served: str) -> None:
    # two inputs the document can only describe loosely, where a schema-valid value is rightly
    # a 400: an event payload is a provider's format, richer than "any JSON" (the parsers' own
    # fuzzing is in tests/test_events_fuzz.py); a cursor is opaque, and one this server did
    # not issue (base64url of something that is no key) is refused; a where expression is a
    # small language (syncd.query) that a string schema cannot describe
    loose = case.operation.path == "/api/v1/events" or bool(
        {"cursor", "where"} & set(case.query or {})
    )
    # an item edit's limits (member names, nesting, size, a tag both added and removed) are
    # more than OpenAPI 3.0 can state (it has no propertyNames); tests/test_item_edits.py
    # tests them
    loose = loose or (case.method == "PATCH" or case.operation.path.endswith(":update"))
    # so are a created dataset's and integration's (a bucket URI, one of source and driver, a
    # known integration, sizes and delete limits, references for secrets: validated like the
    # config); tests/test_runtime_datasets.py tests them
    loose = loose or (
        case.method == "POST"
        and case.operation.path in ("/api/v1/datasets", "/api/v1/integrations")
    )
    excluded = [positive_data_acceptance] if loose else []
    # a case made negative by leaving out the Authorization header is made whole again by
    # the header this test sends with every request: its rejection cannot be expected
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        excluded.append(negative_data_rejection)
    case.call_and_validate(
        base_url=served,
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=excluded,
    )
