"""JSON body transformations of a [route] (docs/gateway.md, "JSON bodies"): the operations of
`request_json` on the request body sent upstream and of `response_json` on the response body
sent to the client (proxyd.gateway.json_ops), each under `max_json_body`.

Only a body labelled JSON is touched: one whose Content-Type is application/json or a
+json type (RFC 6839), with no Content-Encoding. Such a body is read whole (the chain buffers
it, up to the bound) and sent on with its new Content-Length; any other body is not this
filter's (takes_request_body / takes_response_body) and streams past it untouched, its framing
kept. The policy is json_ops': a labelled body that is not JSON passes as it was; one over the
bound is answered 413 (a request) or 502 (a response); a document the operations cannot be
applied to, 400 or 502, never sent on half-transformed.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxyd.filters.api import Headers, Reject, Rejected, header
from proxyd.filters.internal import RelayExchange
from proxyd.gateway.json_ops import JsonBodyError, JsonOp, NotJson, apply
from proxyd.metrics import ErrorKind


def is_json(fields: Headers) -> bool:
    """Whether fields label a body JSON that proxyd can read as it is: a Content-Type of
    application/json or TYPE/SUBTYPE+json (any case, any parameters), and no
    Content-Encoding but identity (a gzipped JSON body is not JSON text)."""
    content_type = header(fields, b"content-type")
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.endswith("+json") and "/" in media):
        return False
    encoding = header(fields, b"content-encoding")
    return encoding is None or encoding.strip().lower() in ("", "identity")


class JsonRequestBody:
    """Built in on a [route] with `request_json`, after transform and before forwarding: the
    filters above it (rules, auth, the operator's own) see the body the client sent."""

    def __init__(self, ops: Sequence[JsonOp], max_size: int) -> None:
        self.ops = tuple(ops)
        self.max_size = max_size
        self.buffer_request_body = max_size

    def request_head(self, exchange: RelayExchange) -> Reject | None:
        """A JSON body longer than the bound by its Content-Length is refused at once,
        before it is read and before any server is tried."""
        length = exchange.request.content_length
        if length is not None and length > self.max_size and is_json(exchange.request_headers):
            why = f"a JSON body of {length} bytes, over max_json_body ({self.max_size})"
            return Reject(413, why, ErrorKind.BODY_TOO_LARGE)
        return None

    def takes_request_body(self, exchange: RelayExchange) -> bool:
        return is_json(exchange.request_headers)

    def request_body(self, exchange: RelayExchange, data: bytes, end: bool) -> bytes:
        try:
            return apply(self.ops, data, self.max_size)
        except NotJson:
            return data
        except JsonBodyError as e:
            status = e.request_status
            kind = ErrorKind.BODY_TOO_LARGE if status == 413 else ErrorKind.BAD_REQUEST
            raise Rejected(Reject(status, f"request_json: {e}", kind)) from None


class JsonResponseBody:
    """Built in on a [route] with `response_json`, at the same row: its response_body is
    the first to see the server's body, so the operator's response filters see it
    transformed."""

    def __init__(self, ops: Sequence[JsonOp], max_size: int) -> None:
        self.ops = tuple(ops)
        self.max_size = max_size
        self.buffer_response_body = max_size

    def takes_response_body(self, exchange: RelayExchange) -> bool:
        return is_json(exchange.response_headers)

    def response_body(self, exchange: RelayExchange, data: bytes, end: bool) -> bytes:
        try:
            return apply(self.ops, data, self.max_size)
        except NotJson:
            return data
        except JsonBodyError as e:
            why = f"response_json: {e}"
            raise Rejected(Reject(e.response_status, why, ErrorKind.FILTER_FAILED)) from None
