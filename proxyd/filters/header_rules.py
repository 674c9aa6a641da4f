"""`request_headers` / `response_headers` rules: the listener's, then the route's."""

from __future__ import annotations

from proxyd.config.model import HeaderRule
from proxyd.filters.api import Reject
from proxyd.filters.internal import RelayExchange
from proxyd.relay.http import headers as policy


def _nonempty(rules: tuple[tuple[HeaderRule, ...], ...]) -> tuple[tuple[HeaderRule, ...], ...]:
    return tuple(each for each in rules if each)


class RequestRules:
    """`request_headers`: built in where the listener or the route has some."""

    def __init__(self, rules: tuple[tuple[HeaderRule, ...], ...]) -> None:
        self.rules = _nonempty(rules)

    def request_head(self, exchange: RelayExchange) -> None:
        fields = exchange.request_headers
        for rules in self.rules:
            fields = policy.apply_rules(fields, rules, exchange.ctx)
        exchange.set_request_headers(fields)


class ResponseRules:
    """`response_headers`: built in where the listener or the route has some. They apply to
    the server's responses and to the route's own answers (respond, redirect, a filter's),
    not to proxyd's error answers (Reject)."""

    def __init__(self, rules: tuple[tuple[HeaderRule, ...], ...]) -> None:
        self.rules = _nonempty(rules)

    def response_head(self, exchange: RelayExchange) -> None:
        if isinstance(exchange.answer, Reject):
            return
        fields = exchange.response_headers
        for rules in self.rules:
            fields = policy.apply_rules(fields, rules, exchange.ctx)
        exchange.set_response_headers(fields)
