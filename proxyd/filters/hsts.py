"""[https] `hsts`: Strict-Transport-Security on every response, ours replacing the server's."""

from __future__ import annotations

from proxyd.filters.internal import RelayExchange


class Hsts:
    def __init__(self, value: str) -> None:
        self.value = value.encode("ascii")

    def response_head(self, exchange: RelayExchange) -> None:
        fields = exchange.response_headers
        fields[:] = [f for f in fields if f[0].lower() != b"strict-transport-security"]
        fields.append((b"Strict-Transport-Security", self.value))
