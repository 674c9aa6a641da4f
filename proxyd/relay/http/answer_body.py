"""Answers whose body streams from a source (proxyd.filters.api.BodySource: a cached
response read from its store): the head goes with the source's length (or chunked), then
the source writes into the exchange, paused while the client's write buffer is full; a
source that fails cuts the response.

A base class of proxyd.relay.http.exchange.Exchange, apart so that each module holds one
thing."""

from __future__ import annotations

from proxyd.filters.api import Answer, BodySource, Headers
from proxyd.metrics import ErrorKind
from proxyd.relay.http.messages import Request, chunk
from proxyd.relay.http.request_body import RequestBody
from proxyd.relay.http.state import STREAMING


class AnswerBody(RequestBody):
    """The streamed-answer part of an Exchange."""

    __slots__ = ("_source", "response_bytes")

    _source: BodySource | None
    """The streamed answer's body while it is sent."""

    request: Request
    status: int
    response_fields: Headers
    response_bytes: int
    """The response body's bytes sent so far."""
    _client_chunked: bool
    _client_keep_alive: bool

    def _frame(self, has_body: bool, length_known: bool, transformed: bool = False) -> Headers:
        raise NotImplementedError

    def _finish(self, keep_alive: bool, truncated: bool = False) -> None:
        raise NotImplementedError

    def _send_source(self, answer: Answer, source: BodySource, head_only: bool) -> None:
        """Send `answer`'s head, then its body from `source` (not for HEAD, 204 and 304: the
        source is stopped unread)."""
        length = source.length
        status = self.status
        if length is not None and status not in (204, 304):
            self.response_fields.append((b"Content-Length", b"%d" % length))
        fields = self._frame(not head_only, length is not None)
        self._move(STREAMING)
        self.client.send_head(status, b"", fields)
        if head_only:
            source.stop()
            self._finish(keep_alive=self._client_keep_alive)
            return
        self._source = source
        source.start(self)

    # proxyd.filters.api.BodySink.

    def source_data(self, data: bytes) -> None:
        if self.finished or not data:
            return
        self.response_bytes += len(data)
        self.client.send(chunk(data) if self._client_chunked else [data])

    def source_end(self) -> None:
        if self.finished:
            return
        self._source = None
        self.client.send_end(self._client_chunked, None)
        self._finish(keep_alive=self._client_keep_alive)

    def source_failed(self, why: str) -> None:
        if self.finished:
            return
        self._source = None
        self._cut(why, ErrorKind.FILTER_FAILED)

    def _source_writable(self, writable: bool) -> None:
        source = self._source
        if source is not None:
            if writable:
                source.resume()
            else:
                source.pause()

    def _stop_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.stop()
