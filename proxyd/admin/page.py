"""The stats page's files (proxyd/admin/page/): one HTML page, its script, style sheet and icon,
served by the admin listener without a token, since they hold no data; the script reads the
API with the operator's token.

Only the files shipped in that directory can be named, so that no path from a request reaches
the file system. They are read once, at the first request, and kept: they are a few kilobytes
and change only with proxyd itself.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Final

INDEX: Final = "index.html"
ASSETS_PREFIX: Final = "/stats/"

CONTENT_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


@functools.cache
def _assets() -> dict[str, tuple[bytes, bytes]]:
    """Every file of the page by its name: (content type, body)."""
    directory = files("proxyd.admin").joinpath("page")
    found = {}
    for entry in directory.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        content_type = CONTENT_TYPES.get(suffix)
        if content_type is not None and entry.is_file():
            found[entry.name] = (content_type, entry.read_bytes())
    return found


def asset(path: str) -> tuple[bytes, bytes] | None:
    """The content type and body for a request's path: `/` is the page, `/stats/NAME` one of
    its files; None for any other path (the admin resource answers 404)."""
    if path == "/":
        name = INDEX
    elif path.startswith(ASSETS_PREFIX):
        name = path[len(ASSETS_PREFIX) :]
    else:
        return None
    return _assets().get(name)
