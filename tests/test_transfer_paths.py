"""The one check between a bucket key and a local path (``syncd.transfer.paths``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.transfer.paths import UnsafePath, check_relative, local_path

REFUSED = {
    "": "empty",
    "../x": "'..'",
    "a/../../x": "'..'",
    "a/..": "'..'",
    "..\\x": "'..'",
    "a\\..\\..\\x": "'..'",
    "./x": "'.'",
    "/etc/passwd": "absolute",
    "\\\\server\\share": "absolute",
    "C:/x": "drive letter",
    "c:x": "drive letter",
    "a//b": "empty path segment",
    "nul\x00byte": "control character",
    "line\nbreak": "control character",
    "esc\x1b[2J": "control character",
}
ALLOWED = ["a", "a/b/c.txt", "..a", "a..b/c", "ünï/日本.txt", "with space/x y", "a/b/", "ab:c"]


@pytest.mark.parametrize("rel", REFUSED)
def test_unsafe_names_are_refused_with_the_reason(rel: str) -> None:
    with pytest.raises(UnsafePath, match=REFUSED[rel].replace(".", r"\.")):
        check_relative(rel)


@pytest.mark.parametrize("rel", ALLOWED)
def test_ordinary_names_pass(rel: str) -> None:
    assert check_relative(rel) == rel


def test_a_linked_folder_on_the_way_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath, match="symbolic link"):
        local_path(str(root), "link/sub/x.txt")
    assert list(outside.iterdir()) == []  # not even the folder was created through the link
    assert local_path(str(root), "real/sub/x.txt") == os.path.join(root, "real", "sub", "x.txt")


def test_a_file_where_a_folder_is_needed_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"file")
    with pytest.raises(UnsafePath, match="a file stands"):
        local_path(str(tmp_path), "a/b.txt")
