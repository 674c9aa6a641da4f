"""Requests proxyd answers itself: a route's `respond` and `redirect`, a listener's
`https_redirect`, and a WebSocket-only port's refusals."""

from __future__ import annotations

from typing import Protocol

from proxyd.config.model import RedirectAction, RespondAction
from proxyd.filters.api import Answer, Reject
from proxyd.filters.internal import RelayExchange
from proxyd.relay.http import headers as policy


class RouteAnswer:
    """A route whose action is `respond` or `redirect` (the last filter of its chain)."""

    def __init__(self, action: RespondAction | RedirectAction) -> None:
        self.action = action

    def request_head(self, exchange: RelayExchange) -> Answer:
        action = self.action
        if isinstance(action, RedirectAction):
            location = policy.expand(action.location, exchange.ctx).encode("latin-1")
            return Answer(action.status, headers=[(b"Location", location)])
        return Answer(
            action.status,
            action.body.encode(),
            [(b"Content-Type", action.content_type.encode())],
        )


class HttpsRedirect:
    """`https_redirect`: 308 to the same URL over https; 308 keeps the method and body
    (RFC 9110 15.4.9)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request_head(self, exchange: RelayExchange) -> Answer:
        authority = exchange.host_name  # an IPv6 literal keeps its brackets
        if self.port != 443:
            authority += f":{self.port}"
        path, query = exchange.raw_target
        location = b"https://" + authority.encode("ascii") + path + (b"?" + query if query else b"")
        return Answer(308, headers=[(b"Location", location)])


class OriginCheck(Protocol):
    """[websocket] allowed_origins (proxyd.relay.websocket_policy.OriginPolicy)."""

    def allows(self, origin: str | None) -> bool: ...


class WebSocketOnly:
    """A [websocket] listener in passthrough mode: WebSocket upgrades only, from the allowed
    Origins."""

    def __init__(self, origins: OriginCheck) -> None:
        self.origins = origins

    def request_head(self, exchange: RelayExchange) -> Answer | None:
        if not exchange.websocket:
            answer = Answer(
                426,
                b"This port takes WebSocket connections only.\n",
                [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
            )
            exchange.set_error_kind("refused")
            return answer
        origin = next((v for k, v in exchange.request_headers if k.lower() == b"origin"), None)
        if not self.origins.allows(None if origin is None else origin.decode("latin-1")):
            return Reject(403, "Origin not allowed")
        return None
