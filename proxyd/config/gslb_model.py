"""The `[gslb NAME]` section's settings (docs/gslb.md): an authoritative DNS listener that
answers for the names of one zone with the addresses of a pool's healthy servers. Frozen
attrs values, as the rest of proxyd.config.model."""

from __future__ import annotations

import ipaddress

import attrs

from proxyd.config.udp_listen import UdpListen

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class GslbRecord:
    """One line of `records`: the name answered from a pool, for every client (no
    `networks`) or for clients in `networks` (the pool preferred for them)."""

    name: str
    """Relative to the zone, lower case, without a trailing dot; "" is the apex (`@`)."""
    pool: str
    networks: tuple[Network, ...] = ()
    line: int = 0
    """The index of the line in the value (the file line once loaded)."""


@attrs.frozen
class GslbConfig(UdpListen):
    name: str
    listen: str
    """`udp:PORT[:interface=ADDRESS]`: UDP and TCP are both served on that address."""
    zone: str
    """The zone apex, lower case, without a trailing dot."""
    records: tuple[GslbRecord, ...]
    ttl: int = 30
    """Seconds, of every answer and of the SOA (its minimum: negative answers too)."""
    nameservers: tuple[str, ...] = ()
    """The zone's NS names (absolute, lower case); () is `ns.ZONE`."""
    max_answers: int = 0
    """The most addresses in one answer (the first ones in the weighted order); 0: all."""
    edns_client_subnet: bool = True
    """Choose by the EDNS Client Subnet option's network when a query carries one (RFC 7871)."""
    max_connections: int = 100
    """TCP connections at once; further ones are closed at accept."""
    idle_timeout: float = 10.0
    """A TCP connection with no query for this long is closed (RFC 7766 6.2.3)."""
    max_queries_per_connection: int = 100
    """A TCP connection is closed after answering this many queries."""

    @property
    def tcp_listen(self) -> str:
        """The TCP endpoint on the same address as `listen`."""
        interface = self.interface
        if ":" in interface:
            return f"tcp6:{self.port}:interface={interface.replace(':', chr(92) + ':')}"
        if interface:
            return f"tcp:{self.port}:interface={interface}"
        return f"tcp:{self.port}"

    @property
    def ns_names(self) -> tuple[str, ...]:
        return self.nameservers or (f"ns.{self.zone}",)

    def pools(self) -> tuple[str, ...]:
        """The pools the records name, each once."""
        return tuple(dict.fromkeys(record.pool for record in self.records))
