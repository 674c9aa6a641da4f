"""WebSocket over HTTP/2 (RFC 8441) towards HTTP/1.1 servers, sans-IO. An extended CONNECT
with `:protocol websocket` is RFC 6455's opening handshake in another form:
proxyd.relay.http.h2_session makes it a GET, so that it takes the routes, rules and filters
HTTP/1.1's handshake takes; the server is sent the HTTP/1.1 handshake with a
Sec-WebSocket-Key of proxyd's own (the client sends none and checks no Sec-WebSocket-Accept,
RFC 8441 5), whose answer proxyd checks (`refusal`); the server's 101 becomes the client's
`:status 200` (`answer_fields`). An extended CONNECT for another protocol is answered 501
(proxyd.relay.http.decide), as RFC 9220 3 asks of the same method over HTTP/3.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Final

from proxyd.relay.http.messages import Headers, Response

PROTOCOL: Final = b"websocket"
"""The `:protocol` proxyd serves (RFC 8441 4)."""
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY: Final = b"sec-websocket-key"
_NOT_ANSWERED: Final = frozenset({b"sec-websocket-accept", b"content-length"})


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer `key` with (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def handshake_fields(fields: Headers) -> Headers:
    """The client's fields for the server's handshake: its Sec-WebSocket-Version, -Protocol
    and -Extensions as they are, and a fresh Sec-WebSocket-Key in place of any it sent."""
    kept = [(name, value) for name, value in fields if name.lower() != _KEY]
    kept.append((b"Sec-WebSocket-Key", base64.b64encode(os.urandom(16))))
    return kept


def refusal(response: Response, sent: Headers) -> str | None:
    """Why the server's `response` to the handshake sent with the fields `sent` cannot reach
    an HTTP/2 client: a 101 whose Sec-WebSocket-Accept does not answer the key proxyd sent,
    or a 2xx, which the client would take for the tunnel's start (RFC 8441 5). None for the
    rest, which goes to the client as an ordinary response."""
    status = response.status
    if 200 <= status < 300:
        return f"WebSocket handshake answered {status}, not 101"
    if status != 101:
        return None
    key = next(value for name, value in sent if name.lower() == _KEY)
    accepts = [value for name, value in response.headers if name.lower() == b"sec-websocket-accept"]
    if accepts != [accept_for(key)]:
        return "WebSocket handshake answered with a wrong Sec-WebSocket-Accept"
    return None


def answer_fields(fields: Headers) -> Headers:
    """The server's 101's fields (as the response rules left them) for the client's
    `:status 200`: without the Sec-WebSocket-Accept, which answers proxyd's key, and without
    a Content-Length, which a 2xx to CONNECT must not have (RFC 9110 9.3.6). Its
    Sec-WebSocket-Protocol and -Extensions go on."""
    return [(name, value) for name, value in fields if name.lower() not in _NOT_ANSWERED]
