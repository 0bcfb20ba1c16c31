"""Bytecode for the checkout the benchmarks run syncd from.

``pip install`` compiles a package's bytecode, as it did for the peers (awscli); a checkout
run under ``PYTHONDONTWRITEBYTECODE`` (set on some machines, this one included) has none, so
every ``syncd`` command would compile its modules from source: about 0.26 s of CPU per start,
measured, that an installed syncd never pays.
"""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_checkout() -> None:
    """Write the ``__pycache__`` of ``syncd/`` and ``providers/`` (quietly; idempotent)."""
    for package in ("syncd", "providers"):
        compileall.compile_dir(ROOT / package, quiet=1)
