"""The suite's one rule for a missing part (an emulator, a browser, a tool): when ``CI`` is
set the test fails, since a CI run that skipped it would prove nothing; on a developer's
machine it is skipped with what to install."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(why: str) -> NoReturn:
    """Fail the test (``CI`` set) or skip it, saying ``why``: what is missing and how to get it."""
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {why}", pytrace=False)
    pytest.skip(why)
