"""A header-based canary router: requests carrying a header (or a stable share of clients)
go to a canary pool instead of the route's.

    [filter canary]
    class = canary:CanaryRouter
    python_path = ../examples/filters
    header = X-Canary          ; default X-Canary
    value = always             ; the value that selects the canary (default: any value)
    pool = web-canary          ; the canary pool (required)
    percent = 5                ; also this share of client addresses, stably (default 0)
"""

from __future__ import annotations

import zlib

from proxyd.filters import Exchange, Filter, Options, add_header, header


class CanaryRouter(Filter):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.header = options.text("header", "X-Canary")
        self.value = options.text("value", "")
        self.pool = options.pool("pool")
        self.percent = options.integer("percent", 0, low=0, high=100)

    def _selected(self, exchange: Exchange) -> bool:
        sent = header(exchange.request_headers, self.header)
        if sent is not None and (not self.value or sent == self.value):
            return True
        # The same client lands on the same side on every request (a stable hash, not
        # Python's per-process salted one).
        return zlib.crc32(exchange.client_ip.encode()) % 100 < self.percent

    def request_head(self, exchange: Exchange) -> None:
        if self._selected(exchange):
            exchange.use_pool(self.pool)
            exchange.vars["canary"] = True

    def response_head(self, exchange: Exchange) -> None:
        if exchange.vars.get("canary"):
            add_header(exchange.response_headers, "X-Canary-Served", "1")
