"""The cyclic garbage collector paused while a burst of objects that are not garbage is made.

CPython starts a collection every few hundred new container objects, and each walks the
objects made so far: importing botocore, loading its models or applying a batch of events
makes hundreds of thousands of them and no reference cycles, so the collections find nothing
and cost a tenth to a half of the work (bench/README.md, issue 27)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off inside the block, and back as it was after it (left off if it was
    off: a caller that turned it off keeps it off)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
