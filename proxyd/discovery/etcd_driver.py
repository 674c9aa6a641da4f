"""Reads and watches a pool's keys in etcd through its v3 JSON gateway with Twisted's own
HTTP client (twisted.web.client.Agent), and hands the server list to its sink."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from proxyd.auth.fetch import BytesBody
from proxyd.clock import DelayedCall
from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.discovery.common import Backoff
from proxyd.discovery.etcd import (
    RANGE_PATH,
    WATCH_PATH,
    Compacted,
    EtcdError,
    EtcdServers,
    Lines,
    parse_range,
    parse_watch,
    range_request,
    watch_request,
)
from proxyd.discovery.srv_driver import Sink

READ_TIMEOUT = 10.0
"""The longest a full read (/v3/kv/range) or the start of a watch may take."""

Post = Callable[[bytes, bytes], "Deferred[Any]"]
"""POST a JSON body to a URL: the response (an IResponse)."""


def agent_post(reactor: Any) -> Post:
    """A Post through twisted.web.client.Agent on `reactor`."""
    agent = Agent(reactor, connectTimeout=READ_TIMEOUT)
    headers = Headers({b"Content-Type": [b"application/json"]})

    def post(url: bytes, body: bytes) -> Deferred[Any]:
        producer: Any = BytesBody(body)  # an IBodyProducer (zope, unseen by mypy)
        return agent.request(b"POST", url, headers, producer)

    return post


class _WatchStream(Protocol):
    """The body of a /v3/watch response: JSON lines, each fed to the driver."""

    def __init__(self, driver: EtcdDriver) -> None:
        self.driver = driver
        self.lines = Lines()
        self.broken = False

    def dataReceived(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            for line in self.lines.feed(data):
                self.driver.watch_message(line)
        except (EtcdError, Compacted) as e:
            self.stop(e)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            # JSON of another shape than etcd's: a broken stream, not a crash of the client.
            self.stop(EtcdError(f"unexpected watch message: {e!r}"))

    def stop(self, error: Exception) -> None:
        self.broken = True
        self.driver.watch_broken(error)
        self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.broken:
            self.driver.watch_ended(reason)


class EtcdDriver:
    """Reads every key under the prefix, then watches from the revision after the read. A
    watch that ends (etcd stopped, the connection broke) starts again from the revision
    after the last one seen, after a growing backoff; one that etcd cancels because that
    revision was compacted reads every key again. Failures keep the list the sink has."""

    def __init__(self, reactor: Any, config: DiscoveryConfig, sink: Sink, post: Post) -> None:
        self.reactor = reactor
        self.config = config
        self.sink = sink
        self.post = post
        self.prefix = config.name.encode("utf-8")
        self.state = EtcdServers(config.max_servers)
        self.backoff = Backoff()
        self.watching = False
        self._timer: DelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        self._stream: _WatchStream | None = None
        self._timeout: DelayedCall | None = None
        self._stopped = False
        self._generation = 0
        """Counts the attempts; what an abandoned one reports is ignored."""

    def _url(self, path: bytes) -> bytes:
        return self.config.endpoint.encode("ascii") + path

    def start(self) -> None:
        self._stopped = False
        self.read()

    def stop(self) -> None:
        self._stopped = True
        self._abandon()

    def _abandon(self) -> None:
        self._generation += 1
        self.watching = False
        for timer in (self._timer, self._timeout):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._timeout = None
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.cancel()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.broken = True
            if stream.transport is not None:
                stream.transport.stopProducing()  # type: ignore[attr-defined]

    def _request(self, path: bytes, body: bytes) -> tuple[int, Deferred[Any]]:
        self._generation += 1
        generation = self._generation
        d = self._in_flight = self.post(self._url(path), body)
        self._timeout = self.reactor.callLater(READ_TIMEOUT, d.cancel)
        return generation, d

    def _current(self, generation: int) -> bool:
        if generation != self._generation or self._stopped:
            return False
        self._in_flight = None
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        return True

    def read(self) -> None:
        """Read every key under the prefix (POST /v3/kv/range)."""
        self._timer = None
        generation, d = self._request(RANGE_PATH, range_request(self.prefix))

        def answered(response: Any) -> Deferred[bytes]:
            if response.code != 200:
                raise EtcdError(f"HTTP {response.code} from {RANGE_PATH.decode()}")
            return readBody(response)

        def body(data: bytes) -> None:
            if generation != self._generation or self._stopped:
                return
            revision, values = parse_range(data)
            self.state.reset(revision, values)
            self._current(generation)
            self.sink.update(self.state.found())
            self.watch()

        d.addCallback(answered).addCallback(body)
        d.addErrback(lambda failure: self._failed(generation, failure, self.read))

    def watch(self) -> None:
        """Watch the prefix from the revision after the last one seen (POST /v3/watch)."""
        self._timer = None
        body = watch_request(self.prefix, self.state.revision + 1)
        generation, d = self._request(WATCH_PATH, body)

        def answered(response: Any) -> None:
            if not self._current(generation):
                return
            if response.code != 200:
                raise EtcdError(f"HTTP {response.code} from {WATCH_PATH.decode()}")
            self.watching = True
            self._stream = _WatchStream(self)
            response.deliverBody(self._stream)
            self.sink.update(self.state.found())  # the same list: says the source is back

        d.addCallback(answered)
        d.addErrback(lambda failure: self._failed(generation, failure, self.watch))

    def watch_message(self, line: bytes) -> None:
        """One line of the watch stream. Raises EtcdError, Compacted."""
        message = parse_watch(line)
        self.backoff.reset()
        if self.state.apply(message):
            self.sink.update(self.state.found())

    def watch_broken(self, error: Exception) -> None:
        self._stream = None
        self.watching = False
        if isinstance(error, Compacted):
            self.sink.failed(f"watch revision {self.state.revision + 1} compacted; reading again")
            self._timer = self.reactor.callLater(0, self.read)
            return
        self.sink.failed(str(error))
        self._retry(self.watch)

    def watch_ended(self, reason: Failure) -> None:
        self._stream = None
        self.watching = False
        if self._stopped:
            return
        self.sink.failed(f"watch ended: {reason.getErrorMessage()}")
        self._retry(self.watch)

    def _failed(self, generation: int, failure: Failure, again: Callable[[], None]) -> None:
        """A read or the start of a watch failed: the same again after the backoff."""
        if not self._current(generation):
            return
        why = failure.getErrorMessage() or type(failure.value).__name__
        self.sink.failed(why)
        self._retry(again)

    def _retry(self, then: Callable[[], None]) -> None:
        if not self._stopped:
            self._timer = self.reactor.callLater(self.backoff.next(), then)
