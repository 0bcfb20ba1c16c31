"""Local-folder specifics the shared conformance suite cannot express: symlinks and key escapes."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import InvalidRequest, NotFound
from providers.local import LocalDriver, content_type


async def keys(driver: LocalDriver) -> list[str]:
    return [o.key async for page in driver.list() for o in page]


async def test_symlinks_are_not_followed_outside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "real.txt").write_text("real")
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "dir" / "real.txt", root / "link-in.txt")
    os.symlink(root / "dir", root / "dir-in")  # linked folders are never descended (no cycles)
    driver = LocalDriver(str(root))
    assert await keys(driver) == ["dir/real.txt", "link-in.txt"]
    with pytest.raises(NotFound):
        await driver.head("link-out.txt")
    with pytest.raises(NotFound):
        await driver.head("dir-out/secret.txt")


@pytest.mark.parametrize("key", ["../outside.txt", "a/../../x", "/etc/passwd", "a//b", "a/./b", ""])
async def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    driver = LocalDriver(str(tmp_path))
    with pytest.raises(InvalidRequest):
        await driver.put(key, b"x")
    with pytest.raises(InvalidRequest):
        await driver.head(key)


async def test_put_writes_atomically_and_lists_no_temporary_file(tmp_path: Path) -> None:
    driver = LocalDriver(str(tmp_path))
    await driver.put("a/b.txt", b"1")
    (tmp_path / "a" / ".c.txt.syncd-tmp").write_bytes(b"half")  # a put() that crashed
    assert await keys(driver) == ["a/b.txt"]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab.:/-Zgzt", max_size=12).map(lambda s: s.strip("/") or "a")
    | st.sampled_from(
        ["a.tar.gz", "a.TGZ", ".json", "..json", "x/.bashrc", "a.b.JPEG", "data:x.txt", "a.svgz"]
    )
)
def test_content_type_is_what_mimetypes_guesses(name: str) -> None:
    """The per-extension lookup the listing uses answers exactly as ``mimetypes.guess_type``."""
    assert content_type(name) == mimetypes.guess_type(name)[0]
