"""The HTTP API (aiohttp): ``syncd serve`` and the daemon's server."""
