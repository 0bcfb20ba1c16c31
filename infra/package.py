"""Build each handler's deployable package: only what that cloud needs.

    python infra/package.py aws|gcp|azure|all [--out dist]

writes ``dist/<cloud>/`` (a folder, what SAM's CodeUri and ``gcloud --source`` take) and
``dist/<cloud>.zip`` (what ``az functionapp deployment source config-zip`` and a Cloud
Functions storage source take). Each holds the handler at the layout its runtime expects, the
``syncd`` and ``providers`` packages, and a ``requirements.txt`` naming that cloud's runtime
dependencies only; the cloud's build step installs them. No credentials are ever packaged.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("syncd", "providers")

#: per cloud: (source file or folder, path inside the package)
LAYOUT: dict[str, list[tuple[str, str]]] = {
    "aws": [
        ("functions/__init__.py", "functions/__init__.py"),
        ("functions/aws_lambda.py", "functions/aws_lambda.py"),
        ("functions/aws_requirements.txt", "requirements.txt"),
    ],
    "gcp": [
        ("functions/gcp/main.py", "main.py"),
        ("functions/gcp/requirements.txt", "requirements.txt"),
    ],
    "azure": [
        ("functions/azure/function_app.py", "function_app.py"),
        ("functions/azure/host.json", "host.json"),
        ("functions/azure/requirements.txt", "requirements.txt"),
    ],
}


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def build(cloud: str, out: Path) -> Path:
    """Build ``out/<cloud>/`` and ``out/<cloud>.zip``; return the zip's path."""
    target = out / cloud
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for src, dest in LAYOUT[cloud]:
        (target / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / src, target / dest)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=_ignore)
    archive = out / f"{cloud}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(target.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(target).as_posix())
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cloud", choices=[*LAYOUT, "all"])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder [default: dist/]")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for cloud in LAYOUT if args.cloud == "all" else [args.cloud]:
        archive = build(cloud, out)
        print(f"{cloud}: {archive} ({archive.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
