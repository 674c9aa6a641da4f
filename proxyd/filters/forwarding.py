"""The forwarding fields (X-Forwarded-*, Forwarded, Via, X-Request-ID) on a proxied request,
its hop-by-hop fields removed: proxyd.relay.http.headers does the work."""

from __future__ import annotations

from typing import Final

from proxyd.filters.internal import RelayExchange
from proxyd.relay.http import headers as policy

NOT_FORWARDED: Final = frozenset({b"expect"})
"""Request fields proxyd answers itself (Expect: 100-continue) beside the hop-by-hop ones."""


class Forwarding:
    """Built in, on every proxied route."""

    def __init__(self, via: bool) -> None:
        self.via = via

    def request_head(self, exchange: RelayExchange) -> None:
        request = exchange.request
        fields = policy.remove_hop_by_hop(request.headers, NOT_FORWARDED)
        request.headers = policy.forward_request_headers(
            fields,
            exchange.ctx,
            trusted=exchange.client_trusted,
            via=self.via,
            version=request.version,
        )
