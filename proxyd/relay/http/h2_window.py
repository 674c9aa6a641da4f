"""Sending a stream's queued bytes within HTTP/2 flow control, for both sides of proxyd
(proxyd.relay.http.h2_session towards clients, proxyd.relay.http.h2_upstream towards
servers)."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from h2.connection import H2Connection


class Outgoing(Protocol):
    """A stream's bytes waiting for its window."""

    pending: deque[bytes]
    pending_bytes: int


def send_within_window(h2: H2Connection, stream_id: int, outgoing: Outgoing) -> int:
    """Send `outgoing`'s bytes as DATA frames while the stream's and the connection's windows
    allow, none larger than the peer takes; what does not fit stays queued. The frames
    sent."""
    pending = outgoing.pending
    sent = 0
    while pending:
        window = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
        if window <= 0:
            break
        piece = pending.popleft()
        if len(piece) > window:
            pending.appendleft(piece[window:])
            piece = piece[:window]
        h2.send_data(stream_id, piece)
        outgoing.pending_bytes -= len(piece)
        sent += 1
    return sent
