"""An exchange's request body, driven by the client connection: held back until the server
(or a filter that takes it whole) wants it, passed through the chain's request_body steps,
framed for the server, and bounded by `body_timeout` between two pieces.

A base class of proxyd.relay.http.exchange.Exchange, apart so that each module holds one
thing; the Exchange's own state (its forward, framing, finish) is what these methods use.
"""

from __future__ import annotations

from proxyd.metrics import ErrorKind
from proxyd.relay.http.filtering import Filtering
from proxyd.relay.http.messages import Body, End, HttpError, chunk, last_chunk
from proxyd.relay.session import IdleTimer


class RequestBody(Filtering):
    """The request-body half of an Exchange."""

    __slots__ = ("_body_timer", "request_bytes", "request_done", "wants_request_events")

    _body_timer: IdleTimer | None
    request_bytes: int
    """The request body's bytes received so far."""
    wants_request_events: bool
    """The client connection hands this exchange its request's body events."""
    _upstream_chunked: bool

    def _stop_forward(self) -> None:
        raise NotImplementedError

    def _cut(self, why: str, kind: ErrorKind) -> None:
        raise NotImplementedError

    def want_request_body(self) -> None:
        """The server takes the body now (called by the Forward), or a filter gets it whole
        before a server is tried."""
        self.wants_request_events = True
        if self._body_timer is None:
            self._body_timer = IdleTimer(self.clock, self.config.body_timeout, self._body_timed_out)
        self._body_timer.start()
        self.client.drive()

    def request_event(self, event: Body | End | HttpError) -> None:
        if isinstance(event, Body):
            data = event.data
            self.request_bytes += len(data)
            if self._body_timer is not None:
                self._body_timer.touch()
            run = self._request_run
            if run is not None:
                run.feed(data, False)
            else:
                self._request_body_out(data, False)
        elif isinstance(event, End):
            self.request_done = True
            self.wants_request_events = False
            self._stop_body_timer()
            run = self._request_run
            if run is not None:
                run.feed(b"", True)
            else:
                self._request_body_out(b"", True)
        else:
            self.wants_request_events = False
            self._stop_body_timer()
            self.client.close_after_response()
            self.fail(event.status, event.message, ErrorKind.BAD_REQUEST)

    def _request_body_out(self, data: bytes, end: bool) -> None:
        forward = self.forward
        if forward is None or self.finished:
            return
        if data:
            forward.send_body(chunk(data) if self._upstream_chunked else [data], len(data))
        if end:
            if self._upstream_chunked:
                forward.send_body([last_chunk()], 0)
            forward.request_sent()

    def _stop_body_timer(self) -> None:
        timer, self._body_timer = self._body_timer, None
        if timer is not None:
            timer.cancel()

    def _body_timed_out(self) -> None:
        if self.finished or self.request_done:
            return
        self.wants_request_events = False
        self.client.close_after_response()
        self._stop_forward()
        if self.response_started:
            self._cut("request body timed out", ErrorKind.BODY_TIMEOUT)
        else:
            self.fail(
                408,
                f"no request body data for {self.config.body_timeout:g}s",
                ErrorKind.BODY_TIMEOUT,
            )
