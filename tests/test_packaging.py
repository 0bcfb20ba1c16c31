"""Every library the shipped code imports is declared in pyproject.toml (issue 8, #12).

A module imported by ``providers/``, ``syncd/`` or ``functions/`` but installed only as some
other package's dependency works on the developer's machine and breaks on a user's, the day
that other package drops it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("providers", "syncd")
OWN = {"providers", "syncd", "functions", "tests"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level(paths: list[Path]) -> dict[str, str]:
    """Top-level modules imported anywhere in ``paths`` (lazy imports included), with one
    file that imports each."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


#: extras that are tooling, not part of what syncd ships
TOOLING = ("test", "fuzz", "all")


def declared() -> set[str]:
    """The core dependencies and those of every shipped extra (s3, gcs, ..., daemon)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra, more in project["optional-dependencies"].items():
        if extra not in TOOLING:
            deps += more
    return {_normal(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) for dep in deps}


def undeclared(imports: dict[str, str], deps: set[str]) -> list[str]:
    dists = packages_distributions()
    missing = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in OWN or module == "__future__":
            continue
        owners = {_normal(d) for d in dists.get(module, [module])}
        if not owners & deps:
            missing.append(f"{module} (imported by {where}; from {', '.join(sorted(owners))})")
    return missing


def test_shipped_code_declares_what_it_imports() -> None:
    files = [p for pkg in SHIPPED for p in (ROOT / pkg).rglob("*.py")]
    assert not undeclared(imported_top_level(files), declared())


def test_the_check_catches_an_undeclared_import() -> None:
    # requests was exactly this case: imported by providers/gcs.py, installed only through
    # google-cloud-storage
    assert undeclared({"requests": "providers/gcs.py"}, declared() - {"requests"})
    assert not undeclared({"json": "x.py", "syncd": "y.py"}, set())
