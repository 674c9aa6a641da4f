"""What a `[tcp]` listener reads from a client before it picks a server, without I/O: the
PROXY header (accept_proxy), then the TLS ClientHello (route_by = sni), whose server name
chooses the pool. The relay feeds the client's first bytes in and gets, once, an outcome:
where to connect and what to send there first, or why to refuse the client.
"""

from __future__ import annotations

import attrs

from proxyd.relay.client_hello import UNRECOGNIZED_NAME, ClientHello, HelloError, HelloReader, alert
from proxyd.relay.proxy_protocol import HeaderReader, ProxyHeaderError, ReceivedHeader
from proxyd.relay.session import CloseReason
from proxyd.relay.sni import SniRoutes

__all__ = ["Preamble", "Ready", "Refused"]


@attrs.frozen
class Ready:
    """Connect to a server of `pool` and send it `first` before anything else the client sends:
    the bytes after the PROXY header, or the whole ClientHello as it came (route_by = sni)."""

    pool: str
    first: bytes


@attrs.frozen
class Refused:
    """Close the client, after writing `reply` (a TLS alert, or nothing)."""

    reason: CloseReason
    why: str
    """For the log line."""
    reply: bytes = b""
    warn: bool = False
    """A warning (a front load balancer misconfigured) rather than info (scanners, typos)."""


class Preamble:
    """Reads the PROXY header when `accept_proxy`, then the ClientHello when `routes` is given
    (route_by = sni); `default_pool` is the listener's pool (None only with routes).

    `feed()` returns None until it has an outcome, then a Ready or a Refused; it must not be
    fed after that. `header` and `hello` hold what was read, for the access log and the
    client's address, even when the outcome is Refused.
    """

    def __init__(
        self, accept_proxy: bool, routes: SniRoutes | None, default_pool: str | None
    ) -> None:
        assert routes is not None or default_pool is not None
        self._routes = routes
        self._default = default_pool
        self._header_reader = HeaderReader() if accept_proxy else None
        self._hello_reader = HelloReader() if routes is not None else None
        self.header: ReceivedHeader | None = None
        self.hello: ClientHello | None = None

    @property
    def waiting_for(self) -> str:
        """What the client has not sent in full yet, for a timeout's log line."""
        return "PROXY header" if self._header_reader is not None else "ClientHello"

    def feed(self, data: bytes) -> Ready | Refused | None:
        if self._header_reader is not None:
            try:
                result = self._header_reader.feed(data)
            except ProxyHeaderError as e:
                return Refused(CloseReason.BAD_PROXY_HEADER, str(e), warn=True)
            if result is None:
                return None
            self.header, data = result
            self._header_reader = None
        if self._hello_reader is None:
            assert self._default is not None
            return Ready(self._default, data)
        if not data:
            return None
        return self._feed_hello(data)

    def _feed_hello(self, data: bytes) -> Ready | Refused | None:
        assert self._hello_reader is not None and self._routes is not None
        try:
            hello = self._hello_reader.feed(data)
        except HelloError as e:
            return Refused(CloseReason.BAD_CLIENT_HELLO, str(e))
        if hello is None:
            return None
        self.hello = hello
        pool = self._routes.pool_for(hello.server_name)
        if pool is None:
            why = f"no route for server name {hello.server_name or '(none)'}"
            return Refused(CloseReason.NO_ROUTE, why, reply=alert(UNRECOGNIZED_NAME))
        return Ready(pool, self._hello_reader.buffered)
