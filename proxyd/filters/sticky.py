"""A pool's `sticky_cookie`: a client that sends the cookie goes back to the server named in
it (while that server is available and has capacity); a response from another server sets
it. The value is a digest of the server's name, so that addresses are not disclosed."""

from __future__ import annotations

import hashlib

from proxyd.filters.internal import RelayExchange
from proxyd.pool import Server


def sticky_id(server: Server) -> str:
    """The cookie value naming `server`."""
    return hashlib.blake2b(server.name.encode(), digest_size=6).hexdigest()


def cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie_name, _, cookie_value = pair.strip().partition(b"=")
            if cookie_name == name:
                return cookie_value
    return None


class StickyCookie:
    """Built in on proxied routes when a pool of the configuration has a sticky_cookie; it
    acts on the requests whose pool has one."""

    def request_head(self, exchange: RelayExchange) -> None:
        pool = exchange.pool
        name = None if pool is None else pool.config.sticky_cookie
        if pool is None or name is None:
            return
        sent = cookie(exchange.request_headers, name.encode("latin-1"))
        exchange.vars["sticky_cookie"] = sent
        if sent is None:
            return
        wanted = sent.decode("latin-1")
        now = exchange.reactor.seconds()
        for server in pool.servers:
            if sticky_id(server) == wanted and server.is_available(now):
                if server.has_capacity():
                    exchange.prefer(server)
                return

    def response_head(self, exchange: RelayExchange) -> None:
        pool = exchange.pool
        server = exchange.upstream_server
        name = None if pool is None else pool.config.sticky_cookie
        if name is None or server is None or exchange.answer is not None:
            return
        wanted = sticky_id(server)
        if exchange.vars.get("sticky_cookie") != wanted.encode():
            exchange.response_headers.append(
                (b"Set-Cookie", f"{name}={wanted}; Path=/; HttpOnly; SameSite=Lax".encode())
            )
