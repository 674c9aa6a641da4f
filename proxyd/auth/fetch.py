"""HTTP(S) requests that proxyd makes of other services: the JWKS document of a token
issuer, the subrequest of forward auth, OCSP requests (proxyd.ocsp_stapling). A thin layer
over twisted.web.client.Agent with the bounds proxyd needs: a connect timeout, a total
timeout (cancelling whatever is in flight), and a body read up to a size (past it, the
connection is dropped and the body is not kept), so that a slow or huge answer can neither
hang a request nor fill memory.

https URLs are verified as a browser would, against the system's CA certificates (Twisted's
default policy, BrowserLikePolicyForHTTPS over platformTrust(): the hostname checked with
service_identity). A private CA must be in the system's store (update-ca-certificates), and
an issuer with a self-signed certificate is refused, which is the point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

Headers = list[tuple[bytes, bytes]]

Fetch = Callable[[str], "Deferred[bytes]"]

_DONE = Failure(ResponseDone())


class FetchTimeout(Exception):
    """No complete answer within the timeout (connect included)."""


class FetchError(Exception):
    """An answer that cannot be used (a status other than the one wanted, a body too large);
    the message says which, in a few words, without the body."""


@attrs.frozen
class Fetched:
    """An answer: its status, fields and body; `body` is None when it was larger than the
    bound (the rest was not read: the connection is dropped)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None


class _BoundedBody(Protocol):
    """Collects a response body up to `limit` bytes into `done`; past it, `done` fires with
    None and the connection is dropped."""

    def __init__(self, limit: int) -> None:
        self.done: Deferred[bytes | None] = Deferred(self._cancel)
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts.clear()
            self.done.callback(None)
            self._cancel(self.done)
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.done.called:
            return
        # PotentialDataLoss: a body delimited by the connection's close, which is its end.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)

    def _cancel(self, _: object) -> None:
        transport = self.transport
        if transport is not None:
            transport.stopProducing()  # type: ignore[attr-defined]


@implementer(IBodyProducer)
class BytesBody:
    """A request body held in memory, written at once (FileBodyProducer would take the
    global cooperator, and with it the global reactor)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _read(response: Any, limit: int) -> Deferred[Fetched]:
    body = _BoundedBody(limit)
    response.deliverBody(body)
    fields = tuple(
        (name, value) for name, values in response.headers.getAllRawHeaders() for value in values
    )
    return body.done.addCallback(lambda data: Fetched(response.code, fields, data))


class HttpClient:
    """GET requests through one Agent: `persistent` keeps up to `max_idle` idle connections
    per host for `idle_timeout` seconds (forward auth asks the same service again and again);
    otherwise each request has its connection (a JWKS fetched every few minutes).

    `close()` closes the idle connections and cancels their timers: the owner calls it when
    it is done with the client (a reload replaced it, the process stops)."""

    def __init__(
        self,
        reactor: Any,
        *,
        connect_timeout: float,
        persistent: bool = False,
        max_idle: int = 8,
        idle_timeout: float = 60.0,
        agent: Any = None,
    ) -> None:
        """`agent` replaces the Agent made here (tests)."""
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._pool.maxPersistentPerHost = max_idle
        self._pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
        self._agent = agent or Agent(reactor, connectTimeout=connect_timeout, pool=self._pool)
        self.closed = False

    def get(
        self,
        url: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        timeout: float,
        max_body: int,
    ) -> Deferred[Fetched]:
        """GET `url` with `headers`: fires with the answer, or fails with FetchTimeout after
        `timeout` seconds, or with the connection's error. Cancelling it drops the request
        (and its connection, if the answer had begun)."""
        return self.request(b"GET", url, headers, None, timeout=timeout, max_body=max_body)

    def post(
        self,
        url: str,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        timeout: float,
        max_body: int,
    ) -> Deferred[Fetched]:
        """POST `body` to `url`, as get() otherwise (an OCSP request, RFC 6960 A.1)."""
        return self.request(
            b"POST", url, headers, BytesBody(body), timeout=timeout, max_body=max_body
        )

    def request(
        self,
        method: bytes,
        url: str,
        headers: Iterable[tuple[bytes, bytes]],
        body: Any,
        *,
        timeout: float,
        max_body: int,
    ) -> Deferred[Fetched]:
        """`method` on `url` with `headers` and `body` (an IBodyProducer or None)."""
        fields = TwistedHeaders()
        for name, value in headers:
            fields.addRawHeader(name, value)
        requested: Deferred[Any] = self._agent.request(method, url.encode("ascii"), fields, body)
        requested.addCallback(_read, max_body)
        # Why the request was given up, if it was: Agent fails a connect cancelled with its
        # own error (ConnectingCancelledError), which the caller should not take for the
        # server's fault, nor a timeout for a refused connection.
        given_up: Literal["", "timeout", "cancelled"] = ""

        def cancel(_: object) -> None:
            nonlocal given_up
            given_up = given_up or "cancelled"
            requested.cancel()

        def expire() -> None:
            nonlocal given_up
            given_up = "timeout"
            requested.cancel()

        answer: Deferred[Fetched] = Deferred(cancel)
        timer = self._reactor.callLater(timeout, expire)

        def settle(result: Fetched | Failure) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if given_up == "cancelled":
                    result = Failure(CancelledError())
                elif given_up == "timeout" or result.check(ConnectTimeoutError) is not None:
                    result = Failure(FetchTimeout(f"no answer within {timeout:g}s"))
            if answer.called:
                return
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        requested.addBoth(settle)
        return answer

    def close(self) -> Deferred[None]:
        self.closed = True
        return self._pool.closeCachedConnections()


def fetch_body(client: HttpClient, *, timeout: float, max_size: int) -> Fetch:
    """The `fetch` of a Jwks: the body of a 200 answer at the URL, else a failure (FetchError
    for another status or a body over `max_size`, FetchTimeout, a connection error)."""

    def fetch(url: str) -> Deferred[bytes]:
        def body(fetched: Fetched) -> bytes:
            if fetched.status != 200:
                raise FetchError(f"status {fetched.status}")
            if fetched.body is None:
                raise FetchError(f"a body over {max_size} bytes")
            return fetched.body

        return client.get(url, timeout=timeout, max_body=max_size).addCallback(body)

    return fetch
