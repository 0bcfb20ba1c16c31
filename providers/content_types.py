"""Content types guessed from a key's extension: the one table and the one lookup.

A listing that states no content type (S3's ``ListObjectsV2``, S3 create events, a local
folder, where there is nothing but the name) gets one guessed here; the item records that it
was guessed (``content_type_guessed`` in its public ``metadata``) so a later HEAD or an event
that carries the real type replaces it.

Whether an item's type is a guess follows a rule per source (:func:`guessed_by_default`: on S3,
a local folder or a synthetic source it is, on GCS and Azure it is not), and an item's stored
``metadata`` says ``content_type_guessed`` only where the item is the exception: a GCS or Azure
object without a type (``true``), an S3 object whose type a HEAD read (``false``). A first sync
of an S3 bucket thus writes ``{}`` as every item's metadata, not the same marker a million times
(which cost a 1M first sync 8%: the row's bytes, and each change record's). :func:`public_metadata`
turns the stored text into the public one.

:data:`TYPES` comes first: the image, video and data formats of labeling and training sets,
which Python's ``mimetypes`` knows only where the machine's ``/etc/mime.types`` does (a slim
container image knows neither ``.webp`` nor ``.heic``), so the answer for them does not depend
on the machine. Every other extension takes ``mimetypes``. An answer is cached per extension:
a listing of a million keys costs a string split and a dictionary lookup per key.
"""

from __future__ import annotations

import functools
import json
import mimetypes

#: what a key with no extension, or one nobody knows, is stored as (S3's own default for an
#: upload without a type is ``binary/octet-stream``; this is the registered name)
UNKNOWN = "application/octet-stream"

#: the providers whose listings and events state each object's content type: on every other
#: source (S3, a local folder, a synthetic one) an item's type is a guess unless it says otherwise
STATING = frozenset({"gcs", "azure"})
#: an item's stored ``metadata`` that says only that it is the exception to its source's rule
GUESSED = '{"content_type_guessed": true}'
STATED = '{"content_type_guessed": false}'


def guessed_by_default(provider: str) -> bool:
    """True when the content types of ``provider``'s items are guesses unless an item's
    stored metadata says ``"content_type_guessed": false``."""
    return provider not in STATING


def marker(guessed: bool, provider_guesses: bool) -> bool | None:
    """What an item's stored metadata says of ``content_type_guessed``: None (nothing) where
    ``guessed`` is its source's rule, else ``guessed``."""
    return None if guessed == provider_guesses else guessed


@functools.lru_cache(maxsize=4096)
def public_metadata(stored: str, provider_guesses: bool) -> str:
    """The public text of an item's provider metadata from its stored text: with
    ``"content_type_guessed": true`` when the type is a guess (by the source's rule or the
    item's exception), without the member when it is not. Cached: most items share a few
    texts (``{}`` above all)."""
    if stored == "{}":
        return GUESSED if provider_guesses else stored
    value = json.loads(stored)
    guessed = value.pop("content_type_guessed", provider_guesses)
    if guessed:
        # the member first, as PostgreSQL's jsonb orders names (shorter first): "provider"
        # and "object_tags" are shorter than it
        value["content_type_guessed"] = True
    elif "content_type_guessed" not in stored:
        return stored
    return json.dumps(
        dict(sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))),
        separators=(", ", ": "),
        ensure_ascii=False,
    )


#: extension (lower case, with the dot) -> content type, ahead of ``mimetypes``
TYPES: dict[str, str] = {
    # still images
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".jxl": "image/jxl",
    ".jp2": "image/jp2",
    ".exr": "image/x-exr",
    ".svg": "image/svg+xml",
    # camera raw formats
    ".dng": "image/x-adobe-dng",
    ".cr2": "image/x-canon-cr2",
    ".cr3": "image/x-canon-cr3",
    ".nef": "image/x-nikon-nef",
    ".arw": "image/x-sony-arw",
    ".orf": "image/x-olympus-orf",
    ".rw2": "image/x-panasonic-rw2",
    ".raf": "image/x-fuji-raf",
    ".raw": "image/x-raw",
    # video
    ".mp4": "video/mp4",
    ".m4v": "video/x-m4v",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".ogv": "video/ogg",
    ".3gp": "video/3gpp",
    # annotations and tensors
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/x-ndjson",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".parquet": "application/vnd.apache.parquet",
    ".npy": "application/x-npy",
    ".npz": "application/x-npz",
    ".h5": "application/x-hdf5",
    ".tfrecord": "application/x-tfrecord",
    ".pcd": "application/x-pcd",
    ".ply": "application/x-ply",
    ".las": "application/vnd.las",
    ".laz": "application/vnd.laszip",
}


def guess(key: str) -> str | None:
    """The content type of ``key`` from its extension (:data:`TYPES`, else ``mimetypes``),
    or None when neither knows it. Looked up once per extension: ``mimetypes.guess_type``
    itself only where the answer may depend on more than the last suffix (an encoding or
    alias suffix such as ``.gz`` or ``.tgz``, a name with no extension past leading dots, a
    key with ``:``, which ``guess_type`` reads as a URL)."""
    head, dot, ext = key.rpartition(".")
    if not dot:
        # no suffix at all: nothing to go by (a million synthetic keys are such)
        return None if ":" not in key else mimetypes.guess_type(key)[0]
    # the common key: a plain name before a suffix seen before (no "/" in it: a dot in a
    # folder's name is no suffix, and no such entry exists)
    known = _BY_SUFFIX.get(ext)
    if known is not None and head and head[-1] not in "/." and ":" not in key:
        return known
    return _slow(key)


def _slow(key: str) -> str | None:
    name = key[key.rfind("/") + 1 :]
    dot = name.rfind(".")
    if dot <= 0 or ":" in key or not name[:dot].strip("."):
        return mimetypes.guess_type(key)[0]
    suffix = name[dot:]
    if not mimetypes.inited:
        mimetypes.init()
    lower = suffix.lower()
    if any(
        s in m for s in (suffix, lower) for m in (mimetypes.suffix_map, mimetypes.encodings_map)
    ):
        return mimetypes.guess_type(key)[0]
    return _type_of_suffix(suffix)


#: the answers of plain suffixes (no encoding or alias suffix), under the suffix as keys
#: spell it, without its dot (``JPG`` as well as ``jpg``): filled by :func:`_type_of_suffix`
#: as suffixes are seen, so the common key costs one lookup
_BY_SUFFIX: dict[str, str] = {}


@functools.lru_cache(maxsize=1024)
def _type_of_suffix(suffix: str) -> str | None:
    found = TYPES.get(suffix.lower()) or mimetypes.guess_type("x" + suffix)[0]
    if found is not None and len(_BY_SUFFIX) < 1024:
        _BY_SUFFIX[suffix[1:]] = found
    return found


def guess_or_unknown(key: str) -> str:
    """:func:`guess`, with :data:`UNKNOWN` for a key nobody knows the type of."""
    return guess(key) or UNKNOWN
