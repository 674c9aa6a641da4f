"""`request_headers` / `response_headers` rules: the listener's, then the route's."""

from __future__ import annotations

from proxyd.config.model import HeaderRule
from proxyd.filters.api import Reject
from proxyd.filters.internal import RelayExchange
from proxyd.relay.http import headers as policy


class HeaderRules:
    """Built in where the listener or the route has rules. Response rules apply to the
    server's responses and to the route's own answers (respond, redirect, a filter's), not
    to proxyd's error answers (Reject)."""

    def __init__(
        self,
        request: tuple[tuple[HeaderRule, ...], ...],
        response: tuple[tuple[HeaderRule, ...], ...],
    ) -> None:
        self.request_rules = tuple(rules for rules in request if rules)
        self.response_rules = tuple(rules for rules in response if rules)
        if not self.request_rules:
            self.request_head = None  # type: ignore[assignment]
        if not self.response_rules:
            self.response_head = None  # type: ignore[assignment]

    def request_head(self, exchange: RelayExchange) -> None:
        fields = exchange.request_headers
        for rules in self.request_rules:
            fields = policy.apply_rules(fields, rules, exchange.ctx)
        exchange.set_request_headers(fields)

    def response_head(self, exchange: RelayExchange) -> None:
        if isinstance(exchange.answer, Reject):
            return
        fields = exchange.response_headers
        for rules in self.response_rules:
            fields = policy.apply_rules(fields, rules, exchange.ctx)
        exchange.set_response_headers(fields)
