"""The origin of tests/integration/test_compress.py, a twisted.web site on 127.0.0.1 that
prints `PORT N` once it listens:

- /json: BODY (64 KiB of JSON) with a strong ETag and Accept-Ranges; 304 to a matching
  If-None-Match (weak comparison, RFC 9110 13.1.2).
- /gzipped: BODY gzipped, with Content-Encoding: gzip.
- /events: server-sent events, one at a time: `data: 0`, then each next one when a request
  to /next arrives (the test asks for it once it has read the one before through proxyd),
  and the end of the stream after `data: 2`.
"""

from __future__ import annotations

import gzip
import json
import sys

from twisted.internet import reactor
from twisted.web import resource, server

BODY = json.dumps(
    [{"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in range(1400)]
).encode()[: 64 * 1024]
ETAG = b'"v1"'
EVENTS = 3


class Json(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"ETag", ETAG)
        request.setHeader(b"Accept-Ranges", b"bytes")
        match = request.getHeader(b"if-none-match")
        if match is not None and match.removeprefix(b"W/") == ETAG:
            request.setResponseCode(304)
            return b""
        return BODY

    render_HEAD = render_GET


class Gzipped(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Encoding", b"gzip")
        return gzip.compress(BODY)


class Events(resource.Resource):
    """The event stream: one request at a time, driven by /next."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stream: server.Request | None = None
        self.sent = 0

    def render_GET(self, request: server.Request) -> int:
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        self.stream, self.sent = request, 0
        self.next()
        return server.NOT_DONE_YET

    def next(self) -> None:
        stream = self.stream
        if stream is None:
            return
        if self.sent == EVENTS:
            stream.finish()
            self.stream = None
            return
        stream.write(b"data: %d\n\n" % self.sent)
        self.sent += 1


class Next(resource.Resource):
    isLeaf = True

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events

    def render_GET(self, request: server.Request) -> bytes:
        self.events.next()
        return b"ok"


def main() -> None:
    root = resource.Resource()
    events = Events()
    root.putChild(b"json", Json())
    root.putChild(b"gzipped", Gzipped())
    root.putChild(b"events", events)
    root.putChild(b"next", Next(events))
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
