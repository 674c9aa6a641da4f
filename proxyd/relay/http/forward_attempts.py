"""A Forward's attempts at its pool's servers (it is their AttemptDriver's owner), the request
sent on the connection an attempt got (head, the body held so far, then the rest as it
arrives), and when the request is tried again.

Retries (nginx's proxy_next_upstream, with its defaults made explicit):
- a failed connect always moves on to the next server;
- a reused keep-alive connection that closes before any response byte is the race with the
  server's own idle timeout: the request is sent again on a fresh connection, not counted;
- a reset, a response timeout, or a 502/503/504 answer moves on only for idempotent methods
  (RFC 9110 9.2.2), and only while the request body sent so far is still held (up to
  REPLAY_LIMIT bytes);
- never once the exchange has a response (its head sent to the client, or a filter reading
  its body); at most `retries` times.

The base class of proxyd.relay.http.forward.Forward, apart so that each module holds one
thing; the Forward's response reading (upstream_readable) is what these methods drive.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config.model import HttpListenerConfig
from proxyd.filters.api import Reject
from proxyd.metrics import Cell, ErrorKind
from proxyd.pool import Server
from proxyd.pool.fault import Fault
from proxyd.relay.attempt import (
    AttemptDriver,
    AttemptPolicy,
    Failed,
    GiveUp,
    GiveUpReason,
    classify,
)
from proxyd.relay.http.messages import Headers, Request, Response, UpstreamHead
from proxyd.relay.http.upstream import UpstreamChannel, UpstreamConnection, Upstreams

_log = Logger(namespace="proxyd.relay.http")

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REPLAY_LIMIT: Final = 64 * 1024
"""Request body bytes kept so that a failed attempt can be sent again elsewhere."""
RETRY_STATUSES: Final = frozenset({502, 503, 504})
MAX_FRESH_RETRIES: Final = 3
"""Times a request the server provably did not act on (UpstreamChannel.retry_fresh) is sent
again to the same server, uncounted, before the loss counts as a failure."""
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
"""What proxyd answers a client's `Expect: 100-continue` with, when it wants the body."""

_NO_SERVER_KINDS: Final = {
    GiveUpReason.NO_SERVER_UP: ErrorKind.NO_SERVER,
    GiveUpReason.ALL_SERVERS_BUSY: ErrorKind.NO_SERVER,
    GiveUpReason.QUEUE_FULL: ErrorKind.QUEUE_FULL,
    GiveUpReason.QUEUE_TIMEOUT: ErrorKind.QUEUE_TIMEOUT,
}
"""The error a request no server could be tried for counts under."""


class Forwarded(Protocol):
    """What a Forward uses of its exchange (proxyd.relay.http.exchange.Exchange)."""

    config: HttpListenerConfig
    clock: Any
    request: Request
    client: Any
    """The client connection (proxyd.relay.http.exchange.ExchangeClient)."""
    request_done: bool
    websocket: bool
    upstream_method: bytes
    response_timeout: float
    """The config's response_timeout, or less for a gRPC call's deadline."""

    @property
    def response_started(self) -> bool: ...

    @property
    def reading_response(self) -> bool:
        """Response events are wanted now (not while a filter holds the response)."""

    def cell(self, server: Server | None) -> Cell: ...
    def want_request_body(self) -> None: ...
    def upstream_response(self, response: Response) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_end(self, trailers: Headers | None) -> None: ...
    def fail(
        self,
        status: int,
        why: str,
        kind: ErrorKind | None = None,
        *,
        answer: Reject | None = None,
    ) -> None:
        """Answer proxyd's error `status` (or cut the response if it started); `answer`, when
        given, is that error answer with its fields."""

    def upstream_cut(self, why: str, kind: ErrorKind) -> None: ...
    def upstream_switched(self, response: Response, conn: UpstreamConnection) -> None: ...


class ForwardAttempts:
    """The attempts half of a Forward."""

    __slots__ = (
        "_awaiting_response",
        "_fresh_retries",
        "_replay",
        "_replay_size",
        "_replayable",
        "_sent_continue",
        "_why",
        "conn",
        "driver",
        "exchange",
        "head",
        "upstreams",
    )

    exchange: Forwarded
    upstreams: Upstreams
    head: UpstreamHead
    driver: AttemptDriver[UpstreamChannel]
    conn: UpstreamChannel | None
    _why: str
    _awaiting_response: bool
    _fresh_retries: int
    _replay: list[bytes]
    _replay_size: int
    _replayable: bool
    _sent_continue: bool

    # The Forward's state this class reads (proxyd.relay.http.forward.Forward).
    response: Response | None

    def upstream_readable(self) -> None:
        raise NotImplementedError

    # Attempts (this Forward is its AttemptDriver's owner).

    def attempt_connect(self, server: Server) -> Deferred[UpstreamChannel]:
        return self.upstreams.connect(server, self.exchange.config.connect_timeout)

    def attempt_checkout(self, server: Server) -> UpstreamChannel | None:
        return self.upstreams.checkout(server)

    def attempt_cell(self, server: Server) -> Cell:
        return self.exchange.cell(server)

    def attempt_started(self, server: Server) -> None:
        """The driver holds the server: nothing to do."""

    def attempt_failed(self, server: Server, failed: Failed) -> None:
        if failed.fault is Fault.LOCAL:
            self._why = f"cannot connect to {server.name}: {failed.why}"
            return
        self._why = f"{server.name}: {failed.why}"
        config = self.exchange.config
        _log.warn(
            "{kind} {listener}: {server} in pool {pool}: {why}",
            kind=config.kind,
            listener=config.name,
            server=server.name,
            pool=self.driver.pool.name,
            why=failed.why,
        )

    def attempt_gave_up(self, give_up: GiveUp) -> None:
        exchange, reason = self.exchange, give_up.reason
        kind: ErrorKind | None
        if give_up.no_server:
            why, kind = f"pool {self.driver.pool.name}: {reason}", _NO_SERVER_KINDS[reason]
        elif reason is GiveUpReason.INTERNAL:  # logged by the driver, with its traceback
            exchange.client.close_after_response()
            why, kind = "internal error", ErrorKind.INTERNAL
        else:
            why = self._why
            kind = ErrorKind.LOCAL_RESOURCE if reason is GiveUpReason.LOCAL_RESOURCE else None
        if give_up.retry_after is None:
            exchange.fail(give_up.status, why, kind)
            return
        answer = Reject(give_up.status, why, kind or "refused")
        answer.headers.append((b"Retry-After", b"%d" % give_up.retry_after))
        exchange.fail(give_up.status, why, kind, answer=answer)

    def attempt_connected(self, conn: UpstreamChannel, server: Server, reused: bool) -> None:
        """Send the request on `conn`: the head, the body held so far, then the rest."""
        exchange = self.exchange
        request = exchange.request
        self.conn = conn
        conn.begin(self, exchange.upstream_method)
        if not exchange.client.writable:
            conn.pause_reading()
        conn.send_request(self.head, self._replay, exchange.request_done)
        if request.expect_continue and not self._sent_continue and not exchange.request_done:
            # The body is wanted now; answer the client's Expect ourselves (as nginx does).
            self._sent_continue = True
            if request.version == "1.1":
                exchange.client.send([CONTINUE])
        if exchange.request_done:
            self.request_sent()
        else:
            if not conn.writable:
                self.upstream_writable(False)
            exchange.want_request_body()

    def _failed(self, failed: Failed, *, report: bool, answer: str | None = None) -> None:
        """Drop the attempt and count `failed` on its server (reported to the pool if
        `report`); then the next server, or with `answer`, answer the client that."""
        self._drop_connection()
        self._why = failed.why
        self.driver.failed(failed, retry=answer is None, report=report)
        if answer is not None:
            self.exchange.fail(failed.status, answer)

    def _may_retry(self) -> bool:
        # Not once the exchange has the response (a filter may be reading its body).
        return (
            self.response is None
            and not self.exchange.response_started
            and self.exchange.upstream_method in IDEMPOTENT
            and self._replayable
            and self.driver.may_try_another()
        )

    # The request body, from the exchange.

    def send_body(self, pieces: list[bytes], size: int) -> None:
        """Body `pieces` (framed as the upstream expects) carrying `size` bytes of body."""
        if self._replayable:
            self._replay_size += size
            if self._replay_size > REPLAY_LIMIT:
                self._replayable = False
                self._replay = []
            else:
                self._replay.extend(pieces)
        if self.conn is not None:
            self.conn.send(pieces)

    def request_sent(self) -> None:
        exchange = self.exchange
        if self.conn is not None:
            self.conn.end_request()
        exchange.client.resume_reading("upstream")
        if self.response is None and not self._awaiting_response:
            self._awaiting_response = True
            exchange.client.expect_response(exchange, exchange.response_timeout)

    def _cancel_response_timer(self) -> None:
        if self._awaiting_response:
            self._awaiting_response = False
            self.exchange.client.stop_expecting_response()

    # Upstream events, called by the connection.

    def upstream_writable(self, writable: bool) -> None:
        client = self.exchange.client
        if writable:
            client.resume_reading("upstream")
        elif not self.exchange.request_done:
            client.pause_reading("upstream")

    def upstream_lost(self, reason: Failure) -> None:
        conn = self.conn
        if conn is None:
            return
        self.upstream_readable()  # the reader may hold a close-delimited end, or an error
        if self.conn is not conn:
            return
        if (
            self.response is None
            and conn.retry_fresh
            and self._replayable
            and self._fresh_retries < MAX_FRESH_RETRIES
        ):
            # The keep-alive race, or a refused HTTP/2 stream: the same server afresh,
            # uncounted.
            self._fresh_retries += 1
            self._drop_connection()
            self.driver.reconnect()
            return
        self._broken("upstream closed the connection", ErrorKind.UPSTREAM_RESET)

    def _broken(self, why: str, kind: ErrorKind) -> None:
        """The connection failed or sent garbage: retry or answer 502, or cut the client."""
        if self.exchange.response_started:
            self._drop_connection()
            self.exchange.upstream_cut(f"upstream: {why}", kind)
            return
        answer = None if self._may_retry() else f"upstream: {why}"
        self._failed(Failed(why, kind), report=self.response is None, answer=answer)

    def response_timed_out(self) -> None:
        """No response head within response_timeout."""
        self._awaiting_response = False
        if self.response is None:
            why = f"no response within {self.exchange.response_timeout:g}s"
            answer = None if self._may_retry() else why
            self._failed(Failed(why, ErrorKind.UPSTREAM_TIMEOUT, 504), report=False, answer=answer)

    # Ending.

    def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._cancel_response_timer()


def attempt_policy(config: HttpListenerConfig) -> AttemptPolicy:
    """How an HTTP listener's requests try servers: retries counted, proxyd's own shortage
    ending the attempts, failures worded for the HTTP relay's logs."""
    return AttemptPolicy(
        config.retries, count_retries=True, local_gives_up=True, checkout=True, classify=_classify
    )


def _classify(failure: Failure) -> Failed | None:
    """A failed connect in the HTTP relay's words. proxyd's own shortage is not counted on
    the server: the exchange counts it (LOCAL_RESOURCE)."""
    failed = classify(failure)
    if failed is None:
        return None
    if failed.fault is Fault.LOCAL:
        return attrs.evolve(failed, kind=None)
    if failed.kind == ErrorKind.CONNECT_TIMEOUT:
        return attrs.evolve(failed, why="connect timed out")
    if failed.kind == ErrorKind.CONNECT_FAILED:
        return attrs.evolve(failed, why=f"connect failed: {failed.why}")
    return failed
