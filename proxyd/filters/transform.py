"""Request transformations of a [route] (docs/gateway.md, "Transformations"): the
operations of `query_params` on the query sent upstream. (`upstream_method` needs no filter:
the exchange sends the route's method when it builds the upstream request.)"""

from __future__ import annotations

from collections.abc import Sequence

from proxyd.filters.api import Exchange
from proxyd.gateway.query_ops import QueryOp, apply_query


class QueryParams:
    """Built in on a [route] with `query_params`, right before forwarding: the filters above
    it (rules, auth, the operator's own) see the query the client sent."""

    def __init__(self, ops: Sequence[QueryOp]) -> None:
        self.ops = tuple(ops)

    def request_head(self, exchange: Exchange) -> None:
        exchange.query = apply_query(self.ops, exchange.query)
