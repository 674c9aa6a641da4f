"""SIP over UDP, as far as the UDP relay needs it: the Call-ID that ties a dialog's messages
to one server (RFC 3261 8.1.1.4, 20.8), read without parsing the rest."""

from __future__ import annotations

_MAX_HEAD = 8192


def call_id(datagram: bytes) -> bytes | None:
    """The Call-ID (or compact `i`) header's value, or None when the datagram has none (a
    CRLF keep-alive, garbage)."""
    head = datagram[:_MAX_HEAD].split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"call-id", b"i"):
            value = value.strip()
            return value or None
    return None
