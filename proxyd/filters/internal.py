"""What the built-in filters use of an exchange beyond the public interface (api.Exchange):
the relay's own objects. proxyd.relay.http.exchange.Exchange provides it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from proxyd.filters.api import Exchange
from proxyd.pool import Pool, Server
from proxyd.relay.http.headers import RequestContext
from proxyd.relay.http.messages import Request


class RelayExchange(Exchange, Protocol):
    @property
    def request(self) -> Request: ...

    @property
    def ctx(self) -> RequestContext: ...

    @property
    def host_name(self) -> str:
        """Host without its port, lower case (as routing matched it)."""

    @property
    def raw_target(self) -> tuple[bytes, bytes]:
        """The path and the query as received."""

    @property
    def request_bytes(self) -> int:
        """The request body's bytes received so far."""

    @property
    def response_bytes(self) -> int:
        """The response body's bytes sent so far."""

    @property
    def started(self) -> float:
        """When the request's head was read (the reactor's seconds)."""

    @property
    def error(self) -> str | None:
        """Why the exchange failed, as the access log's `error` says; None if it did not."""

    @property
    def error_kind(self) -> str | None:
        """The error the metrics count it under (proxyd.metrics.ErrorKind's words)."""

    @property
    def client_trusted(self) -> bool:
        """The client is one of the listener's trusted_proxies."""

    @property
    def websocket(self) -> bool:
        """The request is a WebSocket opening handshake."""

    @property
    def pool(self) -> Pool | None:
        """The pool the request goes to (None until it is proxied)."""

    @property
    def upstream_server(self) -> Server | None:
        """The server that answers (None when proxyd or a filter does)."""

    @property
    def tried(self) -> Sequence[Server]:
        """The servers the request went to, in order (the access log's `upstream` is the
        last, `attempts` their count); empty when it was not proxied."""

    def prefer(self, server: Server) -> None:
        """Try `server` first (when it is available and has capacity)."""

    def set_error_kind(self, kind: str) -> None:
        """Count the exchange under `kind` (proxyd.metrics.ErrorKind) though it succeeds."""

    def set_request_headers(self, headers: list[tuple[bytes, bytes]]) -> None: ...

    def set_response_headers(self, headers: list[tuple[bytes, bytes]]) -> None: ...

    def background(
        self,
        headers: list[tuple[bytes, bytes]],
        prepare: Callable[[Any], None],
        done: Callable[[Any], None],
    ) -> None:
        """Make this request again in the background with `headers` (proxyd.relay.http.
        background): `prepare` gets the new exchange before it starts, `done` once it is
        over."""

    def add_response_fields(self, fields: list[tuple[bytes, bytes]]) -> None:
        """Fields the response will carry, whoever makes it (the server, proxyd, a filter),
        given by a request-phase filter: cheaper than a response-phase step that adds them."""
