"""A small HTTP/1.1 origin server for the demo, the integration tests and functional checks.

    python examples/http_backend.py --port 9101 [--interface 127.0.0.1] [--name web-1]

Twisted moves the bytes and httptools (llhttp) parses the requests. Connections are kept
alive and may pipeline; request bodies (Content-Length or chunked) are counted and hashed as
they arrive, never held whole (but /echo-body's); long responses come from a push producer,
so a download goes at the pace of its reader. Every response carries `X-Backend` (the name),
`X-Connection` (the serial number of this TCP connection on this backend, from 1) and
`X-Request-Count` (requests so far on this connection): a test sees a proxy's upstream
keep-alive in them. Endpoints:

    /                     hello from NAME
    /echo                 JSON: method, target, version, headers, body length and sha256
    /size/N[?chunked=1]   N bytes of a repeating pattern (N may end in k, m, g: KiB, MiB, GiB)
    /upload               POST or PUT: JSON {"bytes": n, "sha256": ...} of the body
    /echo-body            the request body as received, with the request's Content-Type
                          (application/octet-stream if none): the one body this backend
                          holds, up to 1 MiB (413 past it), so that a test sees what a
                          proxy sent, and what it makes of the answer
    /status/CODE          that status, with a short body (none for 204 and 304)
    /headers?NAME=VALUE   200, with each query pair as a response field (as a backend that
                          sends Server or X-Powered-By); /status/CODE takes them too
    /slow/SECONDS         the answer after a wait; /slow-body/SECONDS: head now, body later
    /drop                 the head and half of the body, then the connection closes
    /close                an answer with `Connection: close`, then the connection closes
    /stats                JSON: connections accepted, connections open, requests
    /healthz              ok
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools
from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"  # 64 bytes
BLOCK = PATTERN * 1024  # 64 KiB of whole patterns: block after block continues the pattern
SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_WAITING = 64  # pipelined requests queued before we stop reading the connection
MAX_DELAY = 3600.0
MAX_ECHO_BODY = 1 << 20
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One request as parsed so far; its body is only counted and hashed."""

    method: str = "GET"
    target: bytes = b""
    version: str = "1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep_alive: bool = True
    expect_continue: bool = False
    body_bytes: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    kept: bytearray | None = None
    """The body itself, for /echo-body only (up to MAX_ECHO_BODY)."""


@implementer(IPushProducer)
class PatternProducer:
    """Writes `size` bytes of the pattern (chunked or not) whenever the transport wants more."""

    def __init__(self, backend: HTTPBackend, size: int, chunked: bool) -> None:
        self.backend = backend
        self.left = size
        self.chunked = chunked
        self.paused = False
        self.done = False

    def resumeProducing(self) -> None:
        if self.done:
            return
        self.paused = False
        transport = self.backend.transport
        # transport.write calls pauseProducing as soon as its buffer passes its limit.
        while not self.paused and self.left > 0:
            data = BLOCK if self.left >= len(BLOCK) else BLOCK[: self.left]
            self.left -= len(data)
            if self.chunked:
                transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
            else:
                transport.write(data)
        if self.left == 0:
            self.done = True
            if self.chunked:
                transport.write(b"0\r\n\r\n")
            transport.unregisterProducer()
            self.backend.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = self.done = True


class HTTPBackend(protocol.Protocol):
    """One client connection: parses requests, answers them one at a time, in order."""

    factory: HTTPBackendFactory

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.factory.open += 1
        self.serial = self.factory.connections
        self.served = 0
        self.parser = httptools.HttpRequestParser(self)
        self.incoming: Request | None = None  # being parsed
        self.waiting: deque[Request] = deque()  # parsed, not answered yet
        self.current: Request | None = None  # being answered
        self.closing = False  # answer nothing more
        self.broken = False  # parse nothing more
        self.dispatching = False
        self.reading = True
        self.delayed: IDelayedCall | None = None
        self.transport.setTcpNoDelay(True)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.open -= 1
        self.closing = True
        if self.delayed is not None and self.delayed.active():
            self.delayed.cancel()

    def dataReceived(self, data: bytes) -> None:
        if self.closing or self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.broken = True  # not supported: the request is answered, then we close
        except httptools.HttpParserError:
            self.broken = True
            bad = Request()
            bad.method, bad.keep_alive = "BAD", False
            self.waiting.append(bad)  # the 400 goes out after the answers queued before it
            self.next()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.incoming = Request()

    def on_url(self, url: bytes) -> None:
        self.incoming.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.incoming.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.incoming
        request.method = self.parser.get_method().decode("ascii")
        request.version = self.parser.get_http_version()
        request.keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        request.expect_continue = any(
            name.lower() == b"expect" and value.lower() == b"100-continue"
            for name, value in request.headers
        )
        if urlsplit(request.target).path == b"/echo-body":
            request.kept = bytearray()
        self.send_continue()

    def on_body(self, body: bytes) -> None:
        request = self.incoming
        request.body_bytes += len(body)
        request.digest.update(body)
        if request.kept is not None and request.body_bytes <= MAX_ECHO_BODY:
            request.kept += body

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.waiting.append(self.incoming)
        self.incoming = None
        if len(self.waiting) >= MAX_WAITING and self.reading:
            self.reading = False
            self.transport.pauseProducing()
        self.next()

    # --- answering, one request at a time ---------------------------------------------------

    def send_continue(self) -> None:
        """RFC 9110 10.1.1: the client waits for `100 Continue` before sending its body; send
        it once the request being received is the next one to be answered."""
        request = self.incoming
        if self.closing or self.current is not None or self.waiting:
            return
        if request is not None and request.expect_continue:
            request.expect_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def next(self) -> None:
        if self.dispatching:
            return  # finish() called from inside a handler: the loop below goes on
        self.dispatching = True
        try:
            while self.current is None and self.waiting and not self.closing:
                self.current = request = self.waiting.popleft()
                self.served += 1
                self.factory.requests += 1
                route(self, request)
        finally:
            self.dispatching = False
        if not self.reading and len(self.waiting) < MAX_WAITING // 2 and not self.closing:
            self.reading = True
            self.transport.resumeProducing()
        self.send_continue()

    def finish(self) -> None:
        """The current answer is written: close, or go on with the next request."""
        request, self.current = self.current, None
        if request is None or not request.keep_alive:
            self.closing = True
            self.transport.loseConnection()
        else:
            self.next()

    def head(
        self,
        status: int,
        length: int | None = None,
        content_type: bytes = b"text/plain",
        chunked: bool = False,
        extra: tuple[bytes, ...] = (),
    ) -> None:
        request = self.current
        factory = self.factory
        lines = [
            b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Status")),
            b"Date: " + factory.date(),
            b"X-Backend: " + factory.name_header,
            b"X-Connection: %d" % self.serial,
            b"X-Request-Count: %d" % self.served,
            *extra,
        ]
        if status not in (204, 304) and status >= 200:
            lines.append(b"Content-Type: " + content_type)
            if chunked:
                lines.append(b"Transfer-Encoding: chunked")
            elif length is not None:
                lines.append(b"Content-Length: %d" % length)
        if not request.keep_alive:
            lines.append(b"Connection: close")
        elif request.version == "1.0":
            lines.append(b"Connection: keep-alive")
        lines.append(b"\r\n")
        self.transport.write(b"\r\n".join(lines))

    def answer(self, status: int, body: bytes = b"", content_type: bytes = b"text/plain") -> None:
        """A whole answer with a body held in memory (a small one)."""
        self.head(status, len(body), content_type)
        if body and self.current.method != "HEAD" and status not in (204, 304):
            self.transport.write(body)
        self.finish()

    def answer_json(self, status: int, value: Any) -> None:
        self.answer(status, json.dumps(value).encode() + b"\n", b"application/json")

    def later(self, seconds: float, action: Callable[[], None]) -> None:
        self.delayed = self.factory.reactor.callLater(seconds, action)


class HTTPBackendFactory(protocol.Factory):
    protocol = HTTPBackend
    noisy = False

    def __init__(self, reactor: IReactorTime, name: str) -> None:
        self.reactor = reactor
        self.name = name
        self.name_header = name.encode()
        self.connections = 0
        self.open = 0
        self.requests = 0
        self._date = (0, b"")

    def date(self) -> bytes:
        """The Date header's value, formatted once a second."""
        now = int(self.reactor.seconds())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


# --- endpoints --------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    number, suffix = (text[:-1], text[-1].lower()) if text[-1:].isalpha() else (text, "")
    if suffix not in SUFFIXES or not number.isdigit():
        raise ValueError(text)
    return int(number) * SUFFIXES[suffix]


def parse_delay(text: str) -> float:
    seconds = float(text)
    if not 0 <= seconds <= MAX_DELAY:
        raise ValueError(text)
    return seconds


def route(backend: HTTPBackend, request: Request) -> None:
    if request.method == "BAD":
        backend.answer(400, b"bad request\n")
        return
    url = urlsplit(request.target.decode("latin-1"))
    path, _, argument = url.path.partition("/")[2].partition("/")
    handler = ENDPOINTS.get(path)
    if handler is None or (argument and handler not in WITH_ARGUMENT):
        backend.answer(404, b"not found\n")
        return
    try:
        handler(backend, request, argument, parse_qs(url.query))
    except ValueError:
        backend.answer(400, f"bad argument {argument!r}\n".encode())


def hello(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    backend.answer(200, b"hello from %s\n" % backend.factory.name_header)


def echo(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    backend.answer_json(
        200,
        {
            "method": request.method,
            "target": request.target.decode("latin-1"),
            "version": request.version,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
            "body_length": request.body_bytes,
            "body_sha256": request.digest.hexdigest(),
        },
    )


def echo_body(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    if request.body_bytes > MAX_ECHO_BODY:
        backend.answer(413, b"body over %d bytes\n" % MAX_ECHO_BODY)
        return
    content_type = next(
        (value for name, value in request.headers if name.lower() == b"content-type"),
        b"application/octet-stream",
    )
    backend.answer(200, bytes(request.kept or b""), content_type)


def size(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    length = parse_size(argument)
    chunked = query.get("chunked") == ["1"] and request.version == "1.1"
    backend.head(200, None if chunked else length, b"application/octet-stream", chunked)
    if request.method == "HEAD":
        backend.finish()
        return
    producer = PatternProducer(backend, length, chunked)
    backend.transport.registerProducer(producer, True)
    producer.resumeProducing()


def upload(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    if request.method not in ("POST", "PUT"):
        backend.head(405, 0, extra=(b"Allow: POST, PUT",))
        backend.finish()
        return
    backend.answer_json(200, {"bytes": request.body_bytes, "sha256": request.digest.hexdigest()})


def status(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    code = int(argument)
    if not 200 <= code <= 599:
        raise ValueError(argument)
    body = b"%d %s\n" % (code, REASONS.get(code, b"Status"))
    backend.head(code, len(body), extra=fields_of(query))
    if body and request.method != "HEAD" and code not in (204, 304):
        backend.transport.write(body)
    backend.finish()


def headers(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    body = b"headers\n"
    backend.head(200, len(body), extra=fields_of(query))
    if request.method != "HEAD":
        backend.transport.write(body)
    backend.finish()


def fields_of(query: dict) -> tuple[bytes, ...]:
    """Response fields from query pairs; a name that is not a token or a value with a
    control character is refused (ValueError: 400)."""
    fields = []
    for name, values in query.items():
        if not name.replace("-", "").isalnum():
            raise ValueError(name)
        for value in values:
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise ValueError(value)
            fields.append(f"{name}: {value}".encode("latin-1"))
    return tuple(fields)


def slow(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    backend.later(parse_delay(argument), lambda: hello(backend, request, "", query))


def slow_body(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    delay = parse_delay(argument)
    body = b"hello from %s\n" % backend.factory.name_header
    backend.head(200, len(body))

    def rest() -> None:
        if request.method != "HEAD":
            backend.transport.write(body)
        backend.finish()

    backend.later(delay, rest)


def drop(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    """A backend dying mid-response: the connection ends before the promised length."""
    backend.head(200, len(BLOCK), b"application/octet-stream")
    if request.method != "HEAD":
        backend.transport.write(BLOCK[: len(BLOCK) // 2])
    backend.closing = True
    backend.transport.loseConnection()


def close(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    request.keep_alive = False
    backend.answer(200, b"closing\n")


def stats(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    f = backend.factory
    backend.answer_json(200, {"connections": f.connections, "open": f.open, "requests": f.requests})


def healthz(backend: HTTPBackend, request: Request, argument: str, query: dict) -> None:
    backend.answer(200, b"ok")


ENDPOINTS = {
    "": hello,
    "echo": echo,
    "echo-body": echo_body,
    "size": size,
    "upload": upload,
    "status": status,
    "headers": headers,
    "slow": slow,
    "slow-body": slow_body,
    "drop": drop,
    "close": close,
    "stats": stats,
    "healthz": healthz,
}
WITH_ARGUMENT = {size, status, slow, slow_body}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9101, help="0: a free port, printed")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--name", help="shown in answers and X-Backend (default: ADDRESS:PORT)")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    factory = HTTPBackendFactory(reactor, args.name or "")
    port = reactor.listenTCP(args.port, factory, backlog=1024, interface=args.interface)
    address = port.getHost()
    host = f"[{address.host}]" if ":" in address.host else address.host
    factory.name = args.name or f"{host}:{address.port}"
    factory.name_header = factory.name.encode()
    log.info(
        "http backend {name} listening on {host}:{port}",
        name=factory.name,
        host=address.host,
        port=address.port,
    )
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
