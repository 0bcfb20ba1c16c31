"""Plain value types shared by every layer (nothing here imports the rest of syncd).

:class:`Item` is an item as the Python API hands it out: Python values (``datetime``,
``dict``, ``tuple``) rather than the catalog's JSON and ISO text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(text: str) -> datetime:
    # the catalog writes ISO 8601 in UTC with a ``Z``; Python 3.11 reads that as aware UTC
    return datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a dataset: an external reference to one object.

    ``filename`` is ``/`` + the key relative to the dataset's folder; ``uri`` the object's
    canonical URI; ``mtime`` the object's modification time and ``created_at`` /
    ``updated_at`` when the catalog first saw it and last changed it (all aware UTC).
    ``metadata`` is the provider's part (``provider``, ``object_tags``, maybe
    ``content_type_guessed``) with the user's own under ``metadata["user"]``; ``tags`` the
    user's tags, sorted. ``content_type`` is ``None`` when neither the provider nor the
    key's extension tell it.
    """

    key: str
    filename: str
    uri: str
    size: int
    etag: str
    content_type: str | None
    mtime: datetime
    version: str | None
    md5: str | None
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @classmethod
    def from_public(cls, row: dict[str, Any]) -> Item:
        """The item from its public JSON form (``syncd items ls --json``, the HTTP API)."""
        return cls(
            key=row["key"],
            filename=row["filename"],
            uri=row["uri"],
            size=int(row["size"]),
            etag=row["etag"],
            content_type=row.get("content_type"),
            mtime=_time(row["mtime"]),
            version=row.get("version"),
            md5=row.get("md5"),
            created_at=_time(row["created_at"]),
            updated_at=_time(row["updated_at"]),
            metadata=dict(row.get("metadata") or {}),
            tags=tuple(row.get("tags") or ()),
        )
