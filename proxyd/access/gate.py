"""A listener's door for L4 clients (`[tcp]`, `[websocket]`, `[udp]`): its `access` list,
then its per-client limits (proxyd.access.client_limits), and one throttled log line for the
clients it turns away.

The relay asks `admit(ip)` once per connection, with the address that stands for the client
(the PROXY header's source where the listener accepts one), and calls `release(ip)` exactly
once when a connection it admitted ends. A listener that configures none of these has no
Gate (`Gate.of` gives None), so that it pays one `is not None` per connection and nothing
more.

Each listener's Gate is made with its factory: a reload makes a new one, so the per-client
counts of the connections accepted from then on start afresh, while the connections accepted
before release into the old one (a client may briefly hold its limit on each side of a
reload). With workers, each worker process has its own.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger

from proxyd.access.client_limits import MAX_CONNECTIONS, ClientLimits, Seconds
from proxyd.access.networks import AccessList
from proxyd.config.model import TcpListenerConfig, UdpListenerConfig, WebSocketListenerConfig

__all__ = ["ACCESS_DENIED", "CLIENT_LIMIT", "LOG_INTERVAL", "Gate"]

ACCESS_DENIED: Final = "access_denied"
"""admit()'s answer for an address the access list refuses."""
CLIENT_LIMIT: Final = "client_limit"
"""admit()'s answer for an address over max_connections_per_client or
max_connection_rate_per_client (the log line says which)."""

LOG_INTERVAL: Final = 1.0
"""Seconds between two log lines about refused clients, per listener; the refusals in
between are counted, and the next line says how many."""

ListenerConfig = TcpListenerConfig | WebSocketListenerConfig | UdpListenerConfig

_KINDS: Final[dict[type[ListenerConfig], str]] = {
    TcpListenerConfig: "tcp",
    WebSocketListenerConfig: "websocket",
    UdpListenerConfig: "udp",
}

_log = Logger(namespace="proxyd.access")


class Gate:
    """The access list (None: every address passes it) and the per-client limits (None: no
    limit) of one listener, named `kind name` in the log."""

    def __init__(
        self,
        clock: Seconds,
        kind: str,
        listener: str,
        *,
        access: AccessList | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        self.kind = kind
        self.listener = listener
        self.access = access
        self.limits = limits
        self._clock = clock
        self._next_line = float("-inf")
        """When a refusal may be logged again."""
        self._suppressed = 0
        """Refusals not logged since the last line."""

    @classmethod
    def of(cls, config: ListenerConfig, clock: Seconds) -> Gate | None:
        """The gate of a listener's config; None when it has neither an access list with
        rules nor a per-client limit."""
        access = config.access if config.access is not None and config.access.rules else None
        limits = None
        if not isinstance(config, UdpListenerConfig):
            rate = config.max_connection_rate_per_client
            if config.max_connections_per_client is not None or rate is not None:
                limits = ClientLimits(
                    clock,
                    max_connections=config.max_connections_per_client,
                    max_rate=None if rate is None else float(rate.count),
                    rate_period=1.0 if rate is None else rate.period_seconds,
                )
        if access is None and limits is None:
            return None
        return cls(clock, _KINDS[type(config)], config.name, access=access, limits=limits)

    def admit(self, ip: str) -> str | None:
        """None when a connection (or datagram) from `ip` may go on: with limits, it then
        counts as open until release(ip). Else why not, ACCESS_DENIED or CLIENT_LIMIT, and
        nothing is counted as open."""
        access = self.access
        if access is not None and not access.allows(ip):
            self._refused(ip, ACCESS_DENIED, "access denied")
            return ACCESS_DENIED
        limits = self.limits
        if limits is not None:
            limit = limits.admit(ip)
            if limit is not None:
                self._refused(ip, CLIENT_LIMIT, self._limit_words(limit))
                return CLIENT_LIMIT
        return None

    def release(self, ip: str) -> None:
        """A connection from `ip` that admit() let in has ended (call it once for each)."""
        if self.limits is not None:
            self.limits.release(ip)

    def _limit_words(self, limit: str) -> str:
        limits = self.limits
        assert limits is not None
        if limit == MAX_CONNECTIONS:
            return f"{limit} {limits.max_connections} reached"
        rate = limits.max_rate
        per = "s" if limits.rate_period == 1.0 else "m" if limits.rate_period == 60.0 else None
        shown = f"{rate:g}/{per}" if per else f"{rate:g} per {limits.rate_period:g}s"
        return f"{limit} {shown} reached"

    def _refused(self, ip: str, reason: str, why: str) -> None:
        """Log the refusal, unless a line was written less than LOG_INTERVAL ago: then count
        it for the next line."""
        now = self._clock.seconds()
        if now < self._next_line:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next_line = now + LOG_INTERVAL
        text = "{kind} {listener}: {client} refused: {why}"
        if suppressed:
            text += " ({suppressed} more refused since the last such line)"
        emit = _log.info if reason == ACCESS_DENIED else _log.warn
        emit(
            text,
            kind=self.kind,
            listener=self.listener,
            client=ip,
            reason=reason,
            why=why,
            suppressed=suppressed,
        )
