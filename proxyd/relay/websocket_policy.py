"""What the message-mode WebSocket relay decides, without I/O: which Origins are allowed, the
per-connection message rate, the opening handshake sent to a server and the response headers
passed back to the client, the close codes proxyd may put on the wire, and the words the
access log and the metrics say a connection ended with.

Header lists are `[(name, value), ...]` of str in wire order (the handshake's bytes decoded as
latin-1, as autobahn reads them); names compare case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from proxyd.relay.http.headers import remove_hop_by_hop
from proxyd.relay.session import CloseReason

Headers = list[tuple[str, str]]


class WsClose(StrEnum):
    """How a WebSocket connection ended, where proxyd.relay.session.CloseReason has no word."""

    ORIGIN_REFUSED = "origin_refused"
    BAD_HANDSHAKE = "bad_handshake"
    """The client's opening handshake was malformed (autobahn answered it 400 or the like)."""
    SERVER_HANDSHAKE_TIMEOUT = "server_handshake_timeout"
    """No server answered proxyd's opening handshake with 101 within handshake_timeout."""
    CLIENT_DROPPED = "client_dropped"
    """The client's TCP connection ended without a WebSocket close."""
    SERVER_DROPPED = "server_dropped"
    MESSAGE_TOO_BIG = "message_too_big"
    MESSAGE_RATE = "message_rate"
    PROTOCOL_ERROR = "protocol_error"
    """A side broke RFC 6455 (autobahn closed it with 1002, 1007, ...)."""
    PING_TIMEOUT = "ping_timeout"


Close = CloseReason | WsClose

CLEAN_CLOSES: frozenset[Close] = frozenset(
    {
        CloseReason.CLIENT_CLOSED,
        CloseReason.SERVER_CLOSED,
        CloseReason.SHUTDOWN,
        # Counted on the servers, as each attempt failed or timed out.
        CloseReason.CONNECT_FAILED,
        WsClose.SERVER_HANDSHAKE_TIMEOUT,
    }
)
"""Close words that the metrics do not count as errors of the connection."""


UNSENDABLE_CLOSE_CODES: Final = frozenset({1005, 1006, 1015})
"""RFC 6455 7.4.1: codes that only report what happened and never go in a close frame."""

GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
INVALID_PAYLOAD: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009

MAX_CLOSE_REASON: Final = 123
"""A close frame's payload is at most 125 bytes: the code's 2, then the reason's UTF-8."""


class OriginPolicy:
    """`allowed_origins`: empty accepts any Origin (or none); otherwise the handshake's Origin
    must match one pattern, where `*` matches any characters. Origins compare lower-cased and
    without a trailing slash, as the configuration holds them."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = tuple(
            re.compile(".*".join(re.escape(part) for part in pattern.split("*")))
            for pattern in patterns
        )

    def allows(self, origin: str | None) -> bool:
        if not self._patterns:
            return True
        if origin is None:
            return False
        value = origin.strip().lower().rstrip("/")
        return any(pattern.fullmatch(value) for pattern in self._patterns)


class MessageRate:
    """`max_messages_per_second`, counted in fixed one-second windows: a window opens at the
    first message after the previous one ended, and the limit+1st message within it is one
    too many. (A client may so send up to twice the limit across a window's edge; a fixed
    window keeps one counter and one timestamp per connection.) A limit of 0 is unlimited."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window_start = 0.0
        self._count = 0

    def allow(self, now: float) -> bool:
        """Count a message arriving at `now` (seconds); False when it exceeds the limit."""
        if self.limit <= 0:
            return True
        if self._count == 0 or now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        return self._count <= self.limit


def parse_head(head: bytes) -> tuple[str, Headers]:
    """The request or status line and the header fields of an HTTP/1.1 head (up to and
    including its blank line), decoded as latin-1. Lines without a colon are skipped, as
    autobahn's own parser skips them."""
    lines = head.decode("latin-1").split("\r\n")
    fields: Headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name and name == name.strip():
            fields.append((name, value.strip(" \t")))
    return lines[0], fields


def request_target(uri: str) -> str:
    """The path and query to ask the server for: the client's request-target, with an
    absolute-form one (`GET ws://host/path`) reduced to its path and query."""
    if uri.startswith("/"):
        return uri
    parts = urlsplit(uri)
    target = parts.path or "/"
    return f"{target}?{parts.query}" if parts.query else target


_NOT_FORWARDED: Final = frozenset(
    {
        "host",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "content-length",
    }
)
"""Besides the hop-by-hop fields: the client's handshake fields that proxyd writes itself on
its own handshake to the server, and the forwarding fields a client could forge (a
`[websocket]` listener trusts no client's X-Forwarded-For)."""


def _forwarded_node(ip: str) -> str:
    """RFC 7239 6: an IPv6 node is bracketed and quoted."""
    return f'"[{ip}]"' if ":" in ip else ip


def backend_request(
    *,
    target: str,
    client_fields: Headers,
    host: str,
    client_ip: str | None,
    secure: bool,
    protocols: Sequence[str],
    key: str,
) -> bytes:
    """The opening handshake (RFC 6455 4.1) proxyd sends a server for a client: the client's
    request-target and Host, its end-to-end fields (Cookie, Origin, User-Agent,
    Authorization, ...), its offered subprotocols, and X-Forwarded-For/-Proto/-Host and an
    RFC 7239 Forwarded element describing the client, replacing any it sent. No extension is
    offered: the server's side is not compressed."""
    scheme = "https" if secure else "http"
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    kept = remove_hop_by_hop([(n.encode("latin-1"), v.encode("latin-1")) for n, v in client_fields])
    for name, value in kept:
        if name.lower().decode("latin-1") not in _NOT_FORWARDED:
            lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
    forwarded = f"for={_forwarded_node(client_ip)}" if client_ip else "for=unknown"
    if client_ip:
        lines.append(f"X-Forwarded-For: {client_ip}")
    lines.append(f"X-Forwarded-Proto: {scheme}")
    if host:
        lines.append(f"X-Forwarded-Host: {host}")
        forwarded += f';host="{host}"' if not _is_token(host) else f";host={host}"
    lines.append(f"Forwarded: {forwarded};proto={scheme}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


_NOT_RETURNED: Final = frozenset(
    {
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "sec-websocket-version",
        "server",
        "date",
        "content-length",
    }
)
"""Fields of a server's 101 that proxyd's own 101 to the client says for itself (the
subprotocol and extensions are negotiated per side; Server and Date are hidden, as nginx
hides them)."""


def client_response_headers(server_fields: Headers) -> dict[str, list[str]]:
    """The fields of a server's 101 to repeat on proxyd's 101 to the client (Set-Cookie and
    the like), grouped by name in the form autobahn takes; hop-by-hop fields are left out."""
    kept = remove_hop_by_hop([(n.encode("latin-1"), v.encode("latin-1")) for n, v in server_fields])
    grouped: dict[str, list[str]] = {}
    for name_bytes, value_bytes in kept:
        name = name_bytes.decode("latin-1")
        if name.lower() in _NOT_RETURNED:
            continue
        grouped.setdefault(name, []).append(value_bytes.decode("latin-1"))
    return grouped


def close_reason_bytes(reason: str | None) -> bytes | None:
    """A close reason as it fits a close frame: UTF-8, cut to MAX_CLOSE_REASON bytes on a
    character boundary."""
    if reason is None:
        return None
    data = reason.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")


def sendable(code: int | None) -> bool:
    """Whether a close code may be put in a close frame (None: a close without a code)."""
    return code is None or (code not in UNSENDABLE_CLOSE_CODES and 1000 <= code <= 4999)
