"""`rules`: `[rule NAME]` sections a request is checked against (the listener's, then its
route's), each a regular expression searched in a part of the request: the path (normalized,
as routes match it: `/a/%2e%2e/admin` is `/admin`), the query, the URI (path and query), the
method, the User-Agent or another header's value (an absent field is searched as "").

The query is searched as received and, when it holds escapes, once more percent-decoded
(`+` as a space), so that `%3Cscript` does not slip past a rule on `<script`.

A rule in `enforce` mode refuses the request with its status (403 by default); the first one
to match decides. A rule in `log_only` mode only logs (info: the rule, the request, the
client) and counts what it matched, and the request goes on, so that an operator can see what
a rule would refuse before enforcing it. The access log's `rule` names the rules that matched
(`NAME`, `NAME (log_only)`); `proxyd_rule_matches_total` counts them by rule and mode."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence

from twisted.logger import Logger

from proxyd.config.model import RuleConfig
from proxyd.filters.api import Reject, header
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import ErrorKind, RelayStats

log = Logger(namespace="proxyd.rules")

_PARTS: dict[str, Callable[[RelayExchange], str]] = {
    "path": lambda exchange: exchange.path,
    "query": lambda exchange: exchange.query,
    "uri": lambda exchange: exchange.path + ("?" + exchange.query if exchange.query else ""),
    "method": lambda exchange: exchange.method,
    "user_agent": lambda exchange: header(exchange.request_headers, b"user-agent") or "",
}


def _decoded(text: str) -> str | None:
    """`text` percent-decoded, when that changes it."""
    if "%" not in text and "+" not in text:
        return None
    decoded = urllib.parse.unquote_plus(text, encoding="latin-1")
    return decoded if decoded != text else None


class Rules:
    """Built in where the listener or the route has `rules`. `stats` gives the listener's
    metrics at each count (a reload hands them to the next relay)."""

    def __init__(
        self, rules: Sequence[RuleConfig], listener: str, stats: Callable[[], RelayStats]
    ) -> None:
        self.rules = tuple(rules)
        self.listener = listener
        self.stats = stats
        self._parts = [(rule, self._part(rule)) for rule in self.rules]

    @staticmethod
    def _part(rule: RuleConfig) -> Callable[[RelayExchange], str]:
        if rule.match == "header":
            name = (rule.header or "").encode("latin-1")
            return lambda exchange: header(exchange.request_headers, name) or ""
        return _PARTS[rule.match]

    def request_head(self, exchange: RelayExchange) -> Reject | None:
        matched: list[str] = []
        for rule, part in self._parts:
            subject = part(exchange)
            if not rule.pattern.search(subject):
                decoded = _decoded(subject) if rule.match in ("query", "uri") else None
                if decoded is None or not rule.pattern.search(decoded):
                    continue
            self._count(exchange, rule)
            if rule.mode == "enforce":
                matched.append(rule.name)
                exchange.vars["rule"] = ", ".join(matched)
                return Reject(rule.status, f"rule {rule.name}", ErrorKind.RULE_DENIED)
            matched.append(f"{rule.name} (log_only)")
            exchange.vars["rule"] = ", ".join(matched)
            log.info(
                "[{listener}] rule {rule} (log_only) matches {method} {target} from {client}",
                listener=self.listener,
                rule=rule.name,
                method=exchange.method,
                target=exchange.request.target.decode("latin-1")[:200],
                client=exchange.client_ip,
            )
        return None

    def _count(self, exchange: RelayExchange, rule: RuleConfig) -> None:
        pool = exchange.pool
        cell = self.stats().cell(exchange.route_name or "", "" if pool is None else pool.name, "")
        cell.rule_match(rule.name, rule.mode)
