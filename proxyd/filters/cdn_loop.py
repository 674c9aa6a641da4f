"""A listener's `cdn_loop`: CDN-Loop (RFC 8586) on the requests it proxies, and loops refused.

Each request gets this node's pseudonym appended to CDN-Loop (a field line of its own: the
field is a list, RFC 9110 5.3). A request that arrives carrying the pseudonym once came from
a peer of the same tier (the tier shares one pseudonym, as a CDN does: RFC 8586 2 names the
CDN, not the node); it is marked so (proxyd.relay.http.tier.FROM_PEER) and goes to the
pool's parent, never to another peer. One that carries it more than `cdn_loop_max` times
(1 unless set) has looped: it is refused with 508 Loop Detected (RFC 5842 7.2), as CDNs
refuse a request that went through them too often, before it costs anything else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from proxyd.filters.api import Reject
from proxyd.filters.internal import RelayExchange
from proxyd.relay.http.tier import FROM_PEER

LOOP_STATUS: Final = 508
_NAME: Final = b"cdn-loop"


def hops(fields: Iterable[tuple[bytes, bytes]], pseudonym: bytes) -> int:
    """How many members of the CDN-Loop fields name `pseudonym` (compared without case;
    a member's parameters, after ';', are ignored)."""
    wanted = pseudonym.lower()
    seen = 0
    for name, value in fields:
        if name.lower() != _NAME:
            continue
        for member in value.split(b","):
            if member.partition(b";")[0].strip().lower() == wanted:
                seen += 1
    return seen


class CdnLoop:
    """Row 7 of the chain (docs/http.md), where the listener has `cdn_loop`."""

    def __init__(self, pseudonym: str, most: int = 1) -> None:
        self.name = "cdn_loop"
        self.pseudonym = pseudonym.encode("ascii")
        self.most = most

    def request_head(self, exchange: RelayExchange) -> Reject | None:
        fields = exchange.request_headers
        seen = hops(fields, self.pseudonym)
        if seen > self.most:
            why = f"loop: CDN-Loop names {self.pseudonym.decode()} {seen} times"
            return Reject(LOOP_STATUS, why)
        if seen:
            exchange.vars[FROM_PEER] = True
        fields.append((b"CDN-Loop", self.pseudonym))
        return None
