"""A relay with a [cache] on its route, driven on a MemoryReactorClock with StringTransports
(tests/unit/test_cache_filter*.py): each request on a connection of its own, the origin's
responses written by the test, the clock at a realistic time so that Date fields mean
something."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from proxyd.cache.registry import CacheRegistry
from proxyd.config.cache_model import CacheConfig
from proxyd.relay.http.upstream import UpstreamConnection
from proxyd.resources import ProcessResources
from tests.unit.test_http_relay import Relay

NOW = 1_700_000_000.0


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


class Message:
    """A parsed HTTP/1.1 message: its first line, fields and body."""

    def __init__(self, data: bytes) -> None:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        parts = self.start.split(" ")
        self.status = int(parts[1]) if self.start.startswith("HTTP/") else 0
        self.method = parts[0]
        if self.header("transfer-encoding") == "chunked":
            self.body = _dechunk(rest)
        else:
            self.body = rest
        self.raw = data

    def header(self, name: str) -> str | None:
        found = self.headers(name)
        return ", ".join(found) if found else None

    def headers(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key.lower() == name.lower()]

    @property
    def cache_status(self) -> str:
        return self.header("cache-status") or ""

    @property
    def hit(self) -> bool:
        return "; hit" in self.cache_status

    def __repr__(self) -> str:
        return f"Message({self.raw!r})"


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def response(
    status: int = 200,
    *fields: str,
    body: bytes = b"body",
    date: float | None = None,
    length: bool = True,
) -> bytes:
    """An origin's response: `fields` as "Name: value", a Date of `date` (None: none, the
    caller passes one; use `CacheRelay.now`), a Content-Length unless `length` is false
    (then chunked)."""
    lines = [f"HTTP/1.1 {status} X"]
    if date is not None:
        lines.append(f"Date: {http_date(date)}")
    lines += fields
    if status in (204, 304):
        body = b""
    elif length:
        lines.append(f"Content-Length: {len(body)}")
    else:
        lines.append("Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class CacheRelay:
    """The relay of tests.unit.test_http_relay with `cache = c` on the listener."""

    def __init__(self, **settings: Any) -> None:
        relay_config = {key: settings.pop(key) for key in ("servers", "routes") if key in settings}
        self.config = CacheConfig("c", **settings)
        disk_clock = Clock()  # the disk tier's LRU, sweep and locks: wall-clock-like
        disk_clock.advance(NOW)
        self.registry = CacheRegistry(disk_clock)
        self.relay = Relay(
            cache=self.config,
            keepalive=0,
            resources=ProcessResources(caches=self.registry),
            **relay_config,
        )
        self.reactor = self.relay.reactor
        self.reactor.advance(NOW)
        self.sent: list[bytes] = []
        """The requests the origin got, in order."""

    @property
    def now(self) -> float:
        return self.reactor.seconds()

    @property
    def cache(self) -> Any:
        return self.registry.cache(self.config)

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    def settle(self) -> None:
        self.reactor.advance(0)

    def request(
        self,
        target: str = "/a",
        *fields: str,
        method: str = "GET",
        body: bytes = b"",
    ) -> StringTransport:
        """Send a request on a new connection; its transport shows what it got."""
        client, transport = self.relay.connect_client()
        lines = [f"{method} {target} HTTP/1.1", "Host: example.test", *fields]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        client.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.settle()
        return transport

    def upstream(self) -> tuple[UpstreamConnection, StringTransport] | None:
        """The origin connection the relay asked for next (None: it asked for none)."""
        if not self.relay.pending_connects():
            return None
        upstream, transport = self.relay.accept_upstream()
        self.settle()
        self.sent.append(transport.value())
        return upstream, transport

    def answer(self, data: bytes) -> Message:
        """Answer the next origin request with `data`; the request the origin got."""
        got = self.upstream()
        assert got is not None, "no request went to the origin"
        upstream, transport = got
        upstream.dataReceived(data)
        self.settle()
        return Message(transport.value())

    def get(
        self,
        target: str = "/a",
        *fields: str,
        origin: bytes | None = None,
        method: str = "GET",
        body: bytes = b"",
    ) -> Message:
        """A request's response: from the cache (`origin` None: the test fails if it is
        not answered at once), else the origin's `origin` through the cache."""
        transport = self.request(target, *fields, method=method, body=body)
        if origin is not None:
            self.answer(origin)
        answered = Message(transport.value())
        assert answered.status, "the request was not answered at once"
        return answered

    def origin_requests(self) -> list[Message]:
        return [Message(data) for data in self.sent]

    def store(self, target: str = "/a", *fields: str, **kwargs: Any) -> Message:
        """GET `target` from an origin answering 200 with `fields` (and a Date of now)."""
        return self.get(target, origin=response(200, *fields, date=self.now, **kwargs))


def fields_of(message: Message, names: Iterable[str]) -> dict[str, str | None]:
    return {name: message.header(name) for name in names}
