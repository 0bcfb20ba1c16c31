"""Coverage-guided fuzzing of the event parser with atheris (libFuzzer), run by hand, not in CI.

    .venv/bin/pip install -e '.[fuzz]'                  # atheris (a manylinux wheel)
    .venv/bin/python bench/fuzz_events.py --seconds 300  # prints libFuzzer's stats, then ours

Each input is what a queue or the HTTP API receives: bytes, decoded as an Azure Storage Queue
body would be (plain or base64), parsed with ``parse_text``; what parses is applied to a real
catalog file that has a dataset for every bucket the samples name (emptied before each input,
so no marker makes an event stale and skips the write). The only outcome allowed besides
success is ``EventFormatError``: anything else is a crash, which libFuzzer reports with the
input saved as ``crash-<sha1>`` in the working directory (replay it with
``python bench/fuzz_events.py crash-<sha1>``).

The corpus starts from ``tests/fixtures/events`` (copied: libFuzzer writes what it finds into
its corpus folder) plus a dictionary of the formats' field names, and is kept in
``--corpus`` (a temporary folder by default) so a later run can go on from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["syncd.events", "syncd.daemon.queues.azure_queue"]):
    from syncd.daemon.queues.azure_queue import decode_body
    from syncd.events.apply import apply_events
    from syncd.events.parse import EventFormatError, parse_text

from providers.config import DriverConfig  # noqa: E402  (after the instrumented imports)
from syncd.reconcile.filters import Filters  # noqa: E402
from syncd.store.catalog import Catalog  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "events"
BUCKETS = {
    "s3": DriverConfig(type="s3", bucket="acme-images"),
    "gcs": DriverConfig(type="gcs", bucket="acme-images-gcs"),
    "azure": DriverConfig(type="azure", bucket="images", account="acmestore"),
}
outcomes: Counter[str] = Counter()
catalog: Catalog | None = None


def one_input(data: bytes) -> None:
    assert catalog is not None
    outcomes["inputs"] += 1
    try:
        parsed = parse_text(decode_body(data))
    except EventFormatError:
        outcomes["rejected"] += 1
        return
    outcomes["parsed"] += 1
    for table in ("items", "key_markers", "unrouted_events"):
        catalog.db.execute(f"DELETE FROM {table}")
    result = apply_events(catalog, parsed.events)
    outcomes["events"] += len(parsed.events)
    outcomes["written"] += result.counts["created"] + result.counts["deleted"]


def counted(data: bytes) -> None:
    """:func:`one_input`, with our figures every 100,000 inputs (libFuzzer ends the process
    without running Python's exit handlers, so a final line is not possible)."""
    try:
        one_input(data)
    finally:
        if outcomes["inputs"] % 100_000 == 0:
            report()


def dictionary(path: Path) -> None:
    """libFuzzer's dictionary: every field name and string value of the samples."""
    words: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                words.add(json.dumps(k))
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and len(value) < 60:
            words.add(json.dumps(value))

    for sample in FIXTURES.glob("*.json"):
        walk(json.loads(sample.read_text()))
    lines = [f"w{i}={json.dumps(w)}" for i, w in enumerate(sorted(words))]
    path.write_text("\n".join(lines) + "\n")


def report() -> None:
    print(
        f"syncd: {outcomes['inputs']} inputs, {outcomes['rejected']} rejected "
        f"(EventFormatError), {outcomes['parsed']} parsed, {outcomes['events']} events, "
        f"{outcomes['written']} written to the catalog; nothing else raised",
        flush=True,
    )


def main() -> None:
    global catalog
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=120, help="how long to fuzz")
    parser.add_argument("--corpus", help="corpus folder to keep (default: a temporary one)")
    args, rest = parser.parse_known_args()
    work = Path(tempfile.mkdtemp(prefix="syncd-fuzz-"))
    catalog = Catalog.open(str(work / "c.db"))
    for name, cfg in BUCKETS.items():
        catalog.create_dataset(name, f"{name}://{cfg.bucket}/", cfg, Filters())
    logging.disable(logging.CRITICAL)  # the unrouted-bucket warning, once per fuzzed bucket
    replay = [a for a in rest if not a.startswith("-")]
    if replay:  # crash files given: run each once, here, with a plain traceback
        for name in replay:
            one_input(Path(name).read_bytes())
        report()
        return
    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for sample in FIXTURES.glob("*.json"):
        shutil.copy(sample, corpus / sample.name)
    dictionary(work / "events.dict")
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={args.seconds}",
        f"-dict={work / 'events.dict'}",
        "-max_len=4096",
        "-print_final_stats=1",
        *rest,
    ]
    atheris.Setup(argv, counted)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
