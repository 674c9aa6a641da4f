"""The upstream side of a proxied request: attempts at the pool's servers, the request sent
(head, the body held so far, then the rest as it arrives), the response read and handed to the
exchange as it streams.

The attempts, the request's sending and the retries are the Forward's base class's
(proxyd.relay.http.forward_attempts); this module reads the response: interim (1xx)
responses, a 101 that opens a WebSocket tunnel, the final response's head, body and end,
bounded by idle_timeout while it streams and paused while the client or a filter cannot
take more.
"""

from __future__ import annotations

from typing import Final

from proxyd.metrics import ErrorKind
from proxyd.pool import Affinity, Pool, Server
from proxyd.relay.attempt import AttemptDriver, AttemptPolicy, Failed
from proxyd.relay.http import extended_connect
from proxyd.relay.http import headers as policy
from proxyd.relay.http.decide import has_token
from proxyd.relay.http.forward_attempts import RETRY_STATUSES, ForwardAttempts, Forwarded
from proxyd.relay.http.messages import (
    Body,
    End,
    HttpError,
    Response,
    UpstreamHead,
    response_head,
)
from proxyd.relay.http.upstream import UpstreamConnection, Upstreams
from proxyd.relay.session import IdleTimer

MAX_INTERIM_RESPONSES: Final = 16
"""1xx responses a server may send before its final one (100 Continue, 102, 103 Early
Hints); past that it is answering with a storm, a bad response."""


class Forward(ForwardAttempts):
    """One proxied request's attempts (an AttemptDriver), connection and response reading."""

    __slots__ = (
        "_held",
        "_idle",
        "_interim",
        "header_time",
        "response",
        "upstream_status",
    )

    def __init__(
        self,
        exchange: Forwarded,
        pool: Pool,
        upstreams: Upstreams,
        head: UpstreamHead,
        preferred: Server | None,
        policy: AttemptPolicy,
        affinity: Affinity,
    ) -> None:
        """`policy` is the listener's attempt_policy(); `affinity` what the pool keys on."""
        self.exchange = exchange
        self.upstreams = upstreams
        self.head = head
        self.driver = AttemptDriver(exchange.clock, pool, self, policy, affinity, preferred)
        self.conn = None
        self._why = "no attempt"
        """What the client is answered if the attempts end now."""
        self.upstream_status: int | None = None
        self.header_time: float | None = None
        self.response: Response | None = None
        self._awaiting_response = False
        """The response timeout runs (on the client connection's timer)."""
        self._interim = 0
        self._fresh_retries = 0
        """1xx responses received for this request, over all attempts."""
        self._replay: list[bytes] = []
        self._replay_size = 0
        self._replayable = True
        self._sent_continue = False
        self._idle: IdleTimer | None = None
        """While the response streams: started after the read that brought its head, if that
        read did not end it (a small response needs no timer)."""
        self._held = False
        """The exchange holds the response (a filter is busy): reading is paused."""

    # Upstream events, called by the connection.

    def upstream_readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        reader = conn.reader
        exchange = self.exchange
        while conn is self.conn and exchange.reading_response and not self._held:
            event = reader.next_event()
            if event is None:
                if self.response is not None and self._idle is None:
                    idle = exchange.config.idle_timeout
                    self._idle = IdleTimer(exchange.clock, idle, self._idle_timed_out)
                    self._idle.start()
                return
            if isinstance(event, Body):
                if self._idle is not None:
                    self._idle.touch()
                exchange.upstream_body(event.data)
            elif isinstance(event, Response):
                self._response_head(event)
            elif isinstance(event, End):
                if self.response is not None:
                    self._response_end(event)
            elif isinstance(event, HttpError):
                # After the connection's end, the reader's error is the cut it found.
                kind = ErrorKind.UPSTREAM_RESET if conn.lost else ErrorKind.BAD_RESPONSE
                self._broken(event.message, kind)

    def _response_head(self, response: Response) -> None:
        exchange = self.exchange
        if exchange.websocket and exchange.request.version == "2":
            why = extended_connect.refusal(response, self.head.fields)
            if why is not None:
                self._broken(why, ErrorKind.BAD_RESPONSE)
                return
        if response.status == 101:
            self._switch(response)
            return
        if response.interim:
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                why = f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
                self._broken(why, ErrorKind.BAD_RESPONSE)
                return
            if self._awaiting_response:
                # An interim response is progress: the response timeout starts again
                # (nginx's proxy_read_timeout runs between reads), bounded by the count.
                exchange.client.expect_response(exchange, exchange.response_timeout)
            if response.status == 100 and self._sent_continue:
                return
            if exchange.request.version == "1.1":
                fields = policy.remove_hop_by_hop(response.headers)
                exchange.client.send([response_head(response.status, response.reason, fields)])
            return
        self._cancel_response_timer()
        status = self.upstream_status = response.status
        self.header_time = exchange.clock.seconds() - self.driver.started
        if status in RETRY_STATUSES and self._may_retry():
            self._failed(Failed(f"upstream answered {status}", None, status), report=False)
            return
        self.response = response
        exchange.upstream_response(response)

    def _switch(self, response: Response) -> None:
        """A 101: the exchange passes it on and splices the two connections."""
        conn = self.conn
        assert conn is not None
        if (
            not isinstance(conn, UpstreamConnection)
            or not self.exchange.websocket
            or not has_token(response.headers, b"upgrade", b"websocket")
        ):
            why = "upstream switched protocols without a WebSocket upgrade"
            self._broken(why, ErrorKind.BAD_RESPONSE)
            return
        self._cancel_response_timer()
        self.upstream_status = 101
        self.header_time = self.exchange.clock.seconds() - self.driver.started
        self.response = response
        self.conn = None
        self.exchange.upstream_switched(response, conn)

    def _response_end(self, end: End) -> None:
        assert self.response is not None
        conn = self.conn
        self.conn = None
        if conn is not None:
            if self.response.keep_alive and self.exchange.request_done:
                self.upstreams.checkin(conn)
            else:
                conn.close()
        self.exchange.upstream_end(end.trailers)

    def _idle_timed_out(self) -> None:
        if self.conn is None:
            return
        if (not self.exchange.client.writable or self._held) and self._idle is not None:
            # Not the server's silence: the client stopped reading (its full write buffer
            # paused the upstream), or a filter holds the response. The client's send timeout
            # (or the filter's bound) ends the exchange, blaming the client.
            self._idle.start()
            return
        self._drop_connection()
        self.exchange.upstream_cut(
            f"idle for {self.exchange.config.idle_timeout:g}s while streaming the response",
            ErrorKind.UPSTREAM_IDLE,
        )

    # Backpressure from the client's write buffer, and holds by the exchange's filters.

    def client_writable(self, writable: bool) -> None:
        conn = self.conn
        if conn is not None:
            if writable and not self._held:
                conn.resume_reading()
            elif not writable:
                conn.pause_reading()

    def hold(self, held: bool) -> None:
        """A filter holds the response (pause reading it) or let it go (read on)."""
        self._held = held
        conn = self.conn
        if conn is None:
            return
        if held:
            conn.pause_reading()
        elif self.exchange.client.writable:
            conn.resume_reading()
            self.upstream_readable()

    # Ending.

    def stop(self, for_good: bool = False) -> None:
        """The exchange is answered otherwise: drop the attempt and its timers; `for_good`,
        the exchange is over: the driver detached too (AttemptDriver.detach)."""
        if self.conn is not None or self._awaiting_response:
            self._drop_connection()
        idle = self._idle
        if idle is not None:
            self._idle = None
            idle.cancel()
        if for_good:
            self.driver.detach()
        else:
            self.driver.cancel()
