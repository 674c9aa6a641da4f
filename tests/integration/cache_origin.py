"""An origin for the cache's integration tests: `python cache_origin.py`, listening on
127.0.0.1 on a port the kernel picks (printed as `PORT <n>`).

Every response is made from the query: `h=NAME:VALUE` (repeatable) sets a response field,
`status=CODE`, `size=N` a body of N bytes (written as the client reads it past 1 MiB; else
a short text naming the path and the count), `slow=SECONDS` holds the body's second half
that long (a response that streams in), `etag=TAG` answers a matching If-None-Match with
304. The origin counts the requests per path and query (`X-Count` on each response); GET
/__count?of=TARGET answers that count, GET /__total the sum of them all, GET /__reset
forgets them; after GET
/__fail?status=N every response is an N (0: no more).
"""

from __future__ import annotations

import sys
from collections import Counter
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import reactor
from twisted.web import resource, server

counts: Counter[str] = Counter()
failing = [0]
"""The status every response has after GET /__fail?status=N (0: none)."""


BIG = 1 << 20
"""Bodies larger than this are written a piece at a time, as the client reads them."""
PIECE = b"x" * (256 << 10)


class Pieces:
    """A pull producer of `size` bytes of x, so that a 1 GiB body is never in memory."""

    def __init__(self, request: server.Request, size: int) -> None:
        self.request = request
        self.left = size

    def resumeProducing(self) -> None:
        if self.left <= 0:
            return
        piece = PIECE[: self.left]
        self.left -= len(piece)
        self.request.write(piece)
        if self.left <= 0:
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.left = 0


class Origin(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        target = request.uri.decode()
        url = urlsplit(target)
        if url.path == "/__count":
            return str(counts[dict(parse_qsl(url.query))["of"]]).encode()
        if url.path == "/__total":
            return str(sum(counts.values())).encode()
        if url.path == "/__reset":
            counts.clear()
            return b"ok"
        if url.path == "/__fail":
            failing[:] = [int(dict(parse_qsl(url.query))["status"])]
            return b"ok"
        counts[target] += 1
        count = counts[target]
        if failing[0]:
            request.setResponseCode(failing[0])
            return b"failing\n"
        query = parse_qsl(url.query, keep_blank_values=True)
        request.setHeader(b"X-Count", str(count).encode())
        etag = None
        size = None
        slow = 0.0
        for name, value in query:
            if name == "h":
                field, _, field_value = value.partition(":")
                request.responseHeaders.addRawHeader(field, field_value.strip())
            elif name == "status":
                request.setResponseCode(int(value))
            elif name == "etag":
                etag = value
            elif name == "size":
                size = int(value)
            elif name == "slow":
                slow = float(value)
        if etag is not None:
            request.setHeader(b"ETag", f'"{etag}"'.encode())
            wanted = request.getHeader(b"if-none-match")
            if wanted is not None and f'"{etag}"'.encode() in wanted:
                request.setResponseCode(304)
                return b""
        if size is not None and size > BIG:
            request.setHeader(b"Content-Length", str(size).encode())
            if request.method == b"HEAD":
                return b""
            request.registerProducer(Pieces(request, size), False)
            return server.NOT_DONE_YET  # type: ignore[no-any-return]
        body = b"x" * size if size is not None else f"{url.path} #{count}\n".encode()
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if request.method == b"HEAD":
            return b""
        if not slow:
            return body
        half = len(body) // 2
        request.write(body[:half])

        def rest() -> None:
            request.write(body[half:])
            request.finish()

        reactor.callLater(slow, rest)  # type: ignore[attr-defined]
        return server.NOT_DONE_YET  # type: ignore[no-any-return]


def main() -> None:
    site = server.Site(Origin())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
