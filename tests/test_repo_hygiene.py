"""The repository stands alone (issue 8, #1): no tracked file refers to a path above its root.

A user has the clone and nothing beside it, so a test, a script or a Makefile that reads
``../something`` (or an absolute path into the machine it was written on) works only where it
was written. Relative paths are resolved from the folder of the file that holds them; only
those that leave the repository are flagged, plus absolute paths into ``/work``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.required import missing

ROOT = Path(__file__).resolve().parent.parent
# "../x" or "..\\x" as a path (not "..." nor a version range like "1..3")
RELATIVE = re.compile(r"(?<![\w./])((?:\.\./|\.\.\\)+)([\w.-]*)")
# Path(...).parent chains climbing three or more folders, the shape of the original defect
CLIMB = re.compile(r"(?:\.parent){3,}|\bparents\[\s*[2-9]\s*\]")
ABSOLUTE = re.compile(r"/work/(?:shared|main)\b")
# reading material kept in a folder beside the clone on developer machines, never in a user's
BESIDE = re.compile(r"""\.\./shared\b|shared/reference|["']shared["']\s*/\s*["']reference""")
# a file that must document the rule may name the pattern once
EXEMPT = {"tests/test_repo_hygiene.py"}


def offences(relative: str, text: str) -> list[str]:
    """Every reference in ``text`` (the file at ``relative`` in the repo) to a path outside
    the repository."""
    found = []
    here = (ROOT / relative).parent
    for number, line in enumerate(text.splitlines(), 1):
        for match in RELATIVE.finditer(line):
            target = os.path.normpath(here / (match.group(1) + match.group(2)))
            if not target.startswith(str(ROOT)):
                found.append(f"{relative}:{number}: {match.group(0)!r} leaves the repository")
        if CLIMB.search(line):
            found.append(f"{relative}:{number}: climbs above the repository ({line.strip()!r})")
        if BESIDE.search(line):
            found.append(f"{relative}:{number}: refers to the material beside the clone")
        if ABSOLUTE.search(line):
            found.append(f"{relative}:{number}: absolute path of a developer machine")
    return found


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        missing(f"git cannot list the tracked files (not a git checkout?): {exc}")
    return [name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_above_the_repository() -> None:
    problems = []
    for relative in tracked_files():
        if relative in EXEMPT:
            continue
        path = ROOT / relative
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        problems += offences(relative, data.decode("utf-8", errors="replace"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "text", "bad"),
    [
        ("tests/x.py", 'SAMPLES = ROOT / "../../sibling/events"', True),
        ("tests/x.py", "Path(__file__).resolve().parent.parent.parent / 'shared'", True),
        ("Makefile", "cp /work/shared/reference/NOTES.md .", True),
        ("infra/aws/x.py", 'src = "../../syncd"', False),  # infra/aws -> the repo's syncd/
        ("infra/aws/x.py", 'src = "../../../elsewhere"', True),
        ("README.md", "wait... then 1..3 and ...", False),
        ("tests/x.py", "ROOT = Path(__file__).resolve().parent.parent", False),
    ],
)
def test_the_check_tells_inside_from_outside(where: str, text: str, bad: bool) -> None:
    assert bool(offences(where, text)) is bad
