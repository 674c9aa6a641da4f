"""The response timeout of the exchange a client side runs: a base of the HTTP/1.1 client
connection (through proxyd.relay.http.client_timers.Timers), of an HTTP/2 stream
(proxyd.relay.http.h2_stream) and of a background request (proxyd.relay.http.background)."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxyd.clock import Deadline
from proxyd.relay.http.roles import ResponseWaiter


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseTimer:
    """The response timeout on the `_response_timer` Deadline a subclass makes, whose
    callback is _response_due. Compiled (pyproject.toml's [tool.proxyd] mypyc) with pure
    Python subclasses: the HTTP/2 stream and the background request."""

    _response_timer: Deadline
    _awaiting: ResponseWaiter | None

    def expect_response(self, exchange: ResponseWaiter, timeout: float) -> None:
        """Call exchange.response_timed_out() unless stop_expecting_response() comes within
        `timeout`."""
        self._awaiting = exchange
        self._response_timer.set_in(timeout)

    def stop_expecting_response(self) -> None:
        self._awaiting = None
        self._response_timer.clear()

    def _response_due(self) -> None:
        exchange, self._awaiting = self._awaiting, None
        if exchange is not None:
            exchange.response_timed_out()
