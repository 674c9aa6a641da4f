"""`access` on [http]/[https] listeners and [route] sections: allow/deny lists of addresses
and networks (proxyd.access.networks, nginx's allow/deny: first match wins, no match is
allowed). A request must pass the listener's list, then its route's; refused: 403, counted
as `access_denied`.

The address judged is the client's: the connection's peer (the PROXY protocol's address
where the listener accepts one), or, when the peer is one of the listener's
trusted_proxies, the rightmost X-Forwarded-For address that is not (nginx's
real_ip_recursive; proxyd.access.networks.real_client). A client that is not a trusted proxy
cannot choose the address judged by sending X-Forwarded-For."""

from __future__ import annotations

from collections.abc import Sequence

from proxyd.access.networks import AccessList, Network, real_client
from proxyd.filters.api import Reject
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import ErrorKind


def client_address(exchange: RelayExchange, trusted: Sequence[Network]) -> str:
    """The address judged for `exchange`'s client (module docstring); rate limits count by
    it too (proxyd.filters.ratelimit)."""
    ip = exchange.client_ip
    if exchange.client_trusted:
        forwarded = [v for n, v in exchange.request_headers if n.lower() == b"x-forwarded-for"]
        if forwarded:
            ip = real_client(ip, forwarded, trusted)
    return ip


class AccessControl:
    """Built in where the listener or the route has `access`."""

    def __init__(self, lists: Sequence[AccessList], trusted: Sequence[Network]) -> None:
        self.lists = tuple(lists)
        self.trusted = tuple(trusted)

    def request_head(self, exchange: RelayExchange) -> Reject | None:
        ip = client_address(exchange, self.trusted)
        for rules in self.lists:
            if not rules.allows(ip):
                return Reject(
                    403, f"access denied to {ip or 'the client'}", ErrorKind.ACCESS_DENIED
                )
        return None
