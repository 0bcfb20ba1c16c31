"""The item browser's pages (data: :mod:`syncd.web.browse`).

* ``GET /datasets/{name}/items?prefix=&where=&flat=&cursor=&count=``: a dataset as folders
  (``prefix``: the folder shown, the dataset's root by default), or, with ``where``
  expressions (:mod:`syncd.query`, one per parameter, as ``syncd items ls --where``) or
  ``flat=1``, the matching items at every depth below the prefix; ``cursor`` is the page's
  own next-page link (keyset paging); ``count=1`` adds the exact count of the items under
  the prefix. A filter is searched a window of keys per catalog call for at most
  :data:`SEARCH_SECONDS`; a page that is not full by then says how far it searched and links
  to the search's continuation. A bad expression or cursor is a ``400`` page saying what is wrong in one line.
* ``GET /datasets/{name}/item?key=``: one item: every field, the provider's metadata and
  object tags, the user's metadata and tags.
* ``GET /datasets/{name}/object?key=``: the item's object: a ``302`` to a URL presigned with
  the dataset's credentials (:meth:`providers.base.Driver.presign`, as ``syncd items url``),
  so the bytes go from the bucket to the browser, never through the daemon. A local
  folder's ``file://`` URL cannot be loaded by a page, so for a local dataset the daemon
  serves the file itself, only for a key that is an item of that dataset and only through
  the local driver, which refuses ``..``, absolute keys and any path (a symlink) that
  resolves outside the folder. The bytes are sent as an image only for the image types of
  :data:`~syncd.web.browse.THUMBNAIL_TYPES`, else as a download, always with a CSP
  ``sandbox`` and ``nosniff`` (an HTML or SVG file of the folder never runs as a page of the
  daemon's origin).

An unknown dataset or item is a ``404`` page, never a ``500``. Every page is read-only and
works without JavaScript.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from providers.base import Driver
from providers.redact import redact
from syncd import api
from syncd.query import QueryError
from syncd.server.routes import CONTEXT
from syncd.store.catalog import Dataset, Item
from syncd.web import browse
from syncd.web.pages import _context, _not_found, page

log = logging.getLogger("syncd.web")

#: seconds a thumbnail's presigned URL lives; the redirect to it is cached for less
PRESIGN_TTL = 900
REDIRECT_CACHE = 600
#: seconds a filtered page keeps searching for matches, a window of keys per catalog call
#: (:data:`syncd.web.browse.WINDOW`), before it shows what it found and a "search further"
#: link: with the last window's read, a page answers in about 0.1 s however rare the matches
SEARCH_SECONDS = 0.06
#: seconds an opened driver is kept for presigning (its credentials are read again after)
DRIVER_SECONDS = 300.0
#: the headers of bytes served from a local folder: never a page of this origin
RAW_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=300",
    "Referrer-Policy": "no-referrer",
}


class Drivers:
    """Opened drivers by dataset id, kept :data:`DRIVER_SECONDS` for presigning: a page of
    thumbnails presigns a URL per image, and opening a cloud SDK client per image would
    cost more than the signature. Reopened when the dataset's driver settings change."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[Any, Driver, float]] = {}
        self._lock = asyncio.Lock()

    async def get(self, dataset: Dataset) -> Driver:
        async with self._lock:
            found = self._open.get(dataset.id)
            if found is not None:
                cfg, driver, opened = found
                if cfg == dataset.driver and time.monotonic() - opened < DRIVER_SECONDS:
                    return driver
                del self._open[dataset.id]
                await driver.close()
            driver = api.open_dataset_driver(dataset)
            self._open[dataset.id] = (dataset.driver, driver, time.monotonic())
            return driver

    async def close(self) -> None:
        async with self._lock:
            opened, self._open = list(self._open.values()), {}
        for _, driver, _ in opened:
            try:
                await driver.close()
            except Exception as exc:  # closing must not stop the daemon's shutdown
                log.debug("closing a driver failed: %s", exc)


DRIVERS = web.AppKey("web_drivers", Drivers)


async def _dataset(request: web.Request) -> Dataset:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    found = await ctx.catalog.call(lambda c: c.find_dataset(name))
    if found is None:
        raise _not_found(request, f"There is no dataset named {name!r}.")
    return found


def _key(request: web.Request) -> str:
    key = request.query.get("key")
    if not key:
        raise _bad(request, "give the item's key: ?key=KEY")
    return key


def _bad(request: web.Request, message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=aiohttp_jinja2.render_string(
            "error.html", request, {**_context(request), "message": message}
        ),
        content_type="text/html",
    )


def browser_url(name: str, **params: Any) -> str:
    """The browser page's URL with ``params`` (``where`` a list; empty values left out)."""
    from urllib.parse import quote

    pairs: list[tuple[str, str]] = []
    for k, v in params.items():
        if isinstance(v, list):
            pairs += [(k, x) for x in v if x]
        elif v not in (None, "", False):
            pairs.append((k, "1" if v is True else str(v)))
    query = urlencode(pairs)
    return f"/datasets/{quote(name, safe='')}/items" + (f"?{query}" if query else "")


@page("items.html")
async def items_page(request: web.Request) -> dict[str, Any] | web.StreamResponse:
    ctx = request.app[CONTEXT]
    ds = await _dataset(request)
    q = request.query
    prefix = q.get("prefix")
    where = q.getall("where", [])
    flat = q.get("flat") == "1"
    cursor = q.get("cursor") or None
    total = q.get("count") == "1"
    values: dict[str, Any] = {
        "ds": ds,
        "where": where,
        "flat": flat,
        "url": browser_url,
        "image": browse.is_image,
        "is_folder": lambda e: isinstance(e, browse.FolderRow),
    }
    try:
        found = await ctx.catalog.call(
            lambda c: browse.browse(
                c, ds, prefix=prefix, where=where, flat=flat, cursor=cursor, total=total
            )
        )
        # a filter that matches few items: scan on, a window per catalog call, for a while
        deadline = time.monotonic() + SEARCH_SECONDS
        while found.searched_to is not None and time.monotonic() < deadline:
            found = await ctx.catalog.call(lambda c, page=found: browse.extend(c, page))
    except QueryError as exc:
        values.update(error=str(exc), p=None, prefix=prefix or browse.root_of(ds))
        return aiohttp_jinja2.render_template(
            "items.html", request, {**_context(request), **values}, status=400
        )
    values.update(p=found, prefix=found.prefix, error=None)
    return values


@page("item.html")
async def item_page(request: web.Request) -> dict[str, Any]:
    ctx = request.app[CONTEXT]
    ds = await _dataset(request)
    key = _key(request)
    try:
        view = await ctx.catalog.call(lambda c: browse.item_view(c, ds, key))
    except QueryError as exc:
        raise _bad(request, str(exc)) from None
    if view is None:
        raise _not_found(request, f"Dataset {ds.name!r} has no item {key!r}.")
    parent = key[: key.rfind("/") + 1] if "/" in key else browse.root_of(ds)
    return {
        "ds": ds,
        "v": view,
        "crumbs": browse.crumbs(ds, parent),
        "url": browser_url,
        "local": ds.driver.type == "local",
    }


async def object_(request: web.Request) -> web.StreamResponse:
    """The item's object: a redirect to a presigned URL, or a local file's bytes."""
    ctx = request.app[CONTEXT]
    ds = await _dataset(request)
    key = _key(request)
    # only a key the dataset has (get_item: None for a NUL or an unpaired surrogate too)
    item = await ctx.catalog.call(lambda c: c.get_item(ds.id, key))
    if item is None:
        raise _not_found(request, f"Dataset {ds.name!r} has no item {key!r}.")
    try:
        driver = await request.app[DRIVERS].get(ds)
        if ds.driver.type == "local":
            return await _serve_local(request, driver, key, item)
        url = await driver.presign(key, ttl=PRESIGN_TTL)
    except web.HTTPException:
        raise
    except Exception as exc:  # a provider or config problem: say it, never a 500
        from providers.errors import NotFound

        if isinstance(exc, NotFound | FileNotFoundError):
            raise _not_found(request, f"The object of {key!r} is gone from the source.") from None
        log.warning("object of %r in %r: %s", key, ds.name, redact(str(exc)))
        return web.Response(
            status=502,
            text=redact(f"cannot reach the object of {key!r}: {exc}"),
            content_type="text/plain",
            headers=RAW_HEADERS,
        )
    raise web.HTTPFound(
        location=url, headers={"Cache-Control": f"private, max-age={REDIRECT_CACHE}"}
    )


async def _serve_local(
    request: web.Request, driver: Driver, key: str, item: Item
) -> web.StreamResponse:
    """A local file's bytes, through the local driver (which refuses keys and symlinks
    leading outside its folder: :class:`providers.local.LocalDriver`)."""
    chunks = driver.get(key)
    first = await anext(chunks, b"")  # a missing or escaping file raises here, before a header
    response = web.StreamResponse(headers=RAW_HEADERS)
    if browse.is_image(item) and item.content_type:
        response.content_type = item.content_type.split(";", 1)[0].strip().lower()
    else:
        response.content_type = "application/octet-stream"
        name = key.rsplit("/", 1)[-1]
        from urllib.parse import quote

        response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    await response.prepare(request)
    if request.method != "HEAD":
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    else:
        await chunks.aclose()
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """The item browser's routes and its driver cache (closed with the app)."""
    drivers = Drivers()
    app[DRIVERS] = drivers

    async def close(_: web.Application) -> None:
        await drivers.close()

    app.on_cleanup.append(close)
    r = app.router
    r.add_get("/datasets/{name}/items", items_page)
    r.add_get("/datasets/{name}/item", item_page)
    r.add_get("/datasets/{name}/object", object_)
