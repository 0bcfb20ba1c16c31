"""The suite's rule for a missing part (tests/required.py): a failure when ``CI`` is set, a
skip with what to install otherwise. A CI run that quietly skipped its emulator or browser
tests would report green while testing nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
from tests.required import missing

def test_needs_a_part():
    missing("the part is not installed (install it)")
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 failed"), (None, "1 skipped")])
def test_a_missing_part_fails_in_ci_and_skips_elsewhere(
    tmp_path: Path, ci: str | None, outcome: str
) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in done.stdout, done.stdout + done.stderr
    assert "the part is not installed (install it)" in done.stdout
