"""The filter the http-filter scenario runs: what an operator's smallest useful filter does,
a field added to each request and each response (nginx's proxy_set_header and add_header,
HAProxy's http-request / http-response set-header)."""

from __future__ import annotations

from proxyd.filters import Exchange, Filter, add_header


class Tag(Filter):
    def request_head(self, exchange: Exchange) -> None:
        add_header(exchange.request_headers, b"X-Bench-Filter", b"request")

    def response_head(self, exchange: Exchange) -> None:
        add_header(exchange.response_headers, b"X-Bench-Filter", b"response")
