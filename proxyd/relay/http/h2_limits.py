"""Bounds on what an HTTP/2 client may make proxyd do for nothing, sans-IO: streams it opens
and cancels at once (the "rapid reset" attack, CVE-2023-44487: each stream costs the server
a request while it costs the client a frame), and frames that ask for work but carry no
request (PING, SETTINGS, PRIORITY, empty DATA, unknown frames, and WINDOW_UPDATE frames beyond
one per DATA frame proxyd sent and WINDOW_UPDATES_FREE). Each is counted in a window
of WINDOW seconds; past its bound the connection is sent GOAWAY with ENHANCE_YOUR_CALM and
closed (proxyd.relay.http.h2_session). A browser cancels a few streams when a page
navigates, and pings now and then: far below the bounds.

The h2 package bounds the rest: CONTINUATION frames in a header block (64), the decoded
header list (SETTINGS_MAX_HEADER_LIST_SIZE, max_header_size), HPACK's table, stream
identifiers (increasing, odd), streams at once (SETTINGS_MAX_CONCURRENT_STREAMS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

WINDOW: Final = 10.0
RESETS: Final = 1000
"""Streams a client may cancel (RST_STREAM) in WINDOW seconds."""
IDLE_FRAMES: Final = 2000
"""PING, SETTINGS, PRIORITY, empty DATA and unknown frames a client may send in WINDOW
seconds."""
WINDOW_UPDATES_FREE: Final = 100
"""WINDOW_UPDATE frames a connection may send beyond one per DATA frame it received before
they count as idle frames (browsers and curl enlarge a window or two at the start)."""


class FloodGuard:
    def __init__(
        self, clock: Callable[[], float], resets: int = RESETS, idle_frames: int = IDLE_FRAMES
    ) -> None:
        self._clock = clock
        self._bounds = {"resets": resets, "idle frames": idle_frames}
        self._counts = {"resets": 0, "idle frames": 0}
        self._since = clock()

    def count(self, kind: str) -> str | None:
        """One more `kind` ("resets" or "idle frames"): why the client is over its bound,
        or None."""
        now = self._clock()
        if now - self._since >= WINDOW:
            self._since = now
            self._counts = dict.fromkeys(self._counts, 0)
        count = self._counts[kind] = self._counts[kind] + 1
        bound = self._bounds[kind]
        if count > bound:
            return f"more than {bound} {kind} in {WINDOW:g}s"
        return None
