"""Packaging for each cloud, and the infrastructure templates' lint (cfn-lint, checkov).

cfn-lint and checkov live in their own virtualenv (``make test`` builds ``.venv-iac``; their
pins clash with the test dependencies). With ``CI`` set a missing linter fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IAC_BIN = ROOT / ".venv-iac" / "bin"


def tool(name: str) -> str:
    path = IAC_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI: run `make test` (it builds .venv-iac)")
    pytest.skip(f"{name} not installed: run `make test` to build .venv-iac")


@pytest.mark.parametrize(
    ("cloud", "entry", "absent"),
    [
        ("aws", "functions/aws_lambda.py", ["main.py", "function_app.py"]),
        ("gcp", "main.py", ["functions/aws_lambda.py", "function_app.py"]),
        ("azure", "function_app.py", ["functions/aws_lambda.py", "main.py"]),
    ],
)
def test_package_holds_only_what_the_cloud_needs(
    tmp_path: Path, cloud: str, entry: str, absent: list[str]
) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "package.py"), cloud, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(tmp_path / f"{cloud}.zip").namelist())
    assert {
        entry,
        "requirements.txt",
        "syncd/events/parse.py",
        "syncd/events/delivery.py",
        "providers/base.py",
    } <= names
    assert not names & set(absent)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    requirements = (tmp_path / cloud / "requirements.txt").read_text()
    others = {
        "aws": ["functions-framework", "azure-functions"],
        "gcp": ["azure-functions", "boto3"],
        "azure": ["functions-framework", "boto3"],
    }[cloud]
    assert not any(o in requirements for o in others)
    # the packaged handler imports from the package folder alone
    module = {"aws": "functions.aws_lambda", "gcp": "main", "azure": "function_app"}[cloud]
    check = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=tmp_path / cloud,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path / cloud)},
    )
    assert check.returncode == 0, check.stderr


def test_cfn_lint_passes() -> None:
    proc = subprocess.run(
        [tool("cfn-lint"), str(ROOT / "infra" / "aws" / "template.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_passes_on_all_templates() -> None:
    proc = subprocess.run(
        [
            tool("checkov"),
            "-d",
            str(ROOT / "infra"),
            "--framework",
            "cloudformation",
            "terraform",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Failed checks: 0" in proc.stdout and "Passed checks" in proc.stdout
