"""The schema of each section kind: its model class, whether it takes a NAME, and its keys,
each with the parser of its value. The parsers that need more than their text (other
sections' names, the file's directory) are here too, taking a Context."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxyd.config import (
    acme_section,
    cache_section,
    compress,
    discovery,
    gslb_section,
    otlp,
    routes,
    stick,
    tier,
    tls,
)
from proxyd.config import values as v
from proxyd.config.errors import Invalid
from proxyd.config.keys import Context, Key, reference
from proxyd.config.model import (
    BALANCE_ALGORITHMS,
    ESCAPED_SLASHES,
    TRACE_CONTEXT,
    UPSTREAM_PROTOCOLS,
    AdminConfig,
    GlobalConfig,
    HttpListenerConfig,
    PoolConfig,
    SniRoute,
    TcpListenerConfig,
    UdpListenerConfig,
    WebSocketListenerConfig,
)
from proxyd.config.route_model import FilterConfig, ProxyAction, RouteConfig
from proxyd.config.routes import RouteSection
from proxyd.config.security_model import INVALID_HEADERS
from proxyd.config.security_schema import (
    HTTP_SECURITY_KEYS,
    L4_ACCESS_KEYS,
    L4_CLIENT_KEYS,
    ROUTE_SECURITY_KEYS,
    SECURITY_SCHEMAS,
)
from proxyd.config.tls_model import Certificate, CertificateSource

MAX_QUEUED = 1_000_000
"""Of `max_queued` (pools and routes; waiters cost a Deferred and a timer each) and of a
route's `max_in_flight`."""
MAX_JSON_BODY = 64 << 20
"""Of a route's `max_json_body`. A JSON body is held whole, in memory several times its size,
and parsed and written back while the process serves nothing else (about 22 µs a KiB,
proxyd.gateway.json_ops: 1.4 s for 64 MiB); past that it is a stall, not a transformation."""


def _pool_name(text: str, ctx: Context) -> str:
    return reference("pool", text.strip(), ctx.pools)


def _routes(text: str, ctx: Context) -> tuple[RouteConfig, ...]:
    """The `routes` value, one route a line, with its references checked. Each route's `line`
    is its index in the value here; loads() makes it the file line."""
    result: list[RouteConfig] = []
    errors: list[Invalid] = []
    for index, text_line in v.each_line(text):
        try:
            line = routes.route_line(text_line)
            if isinstance(line.action, ProxyAction):
                reference("pool", line.action.pool, ctx.pools)
            if line.ref is None:
                result.append(line.route(index))
                continue
            reference("route", line.ref, ctx.route_names)
            section = ctx.routes.get(line.ref)
            if section is not None:  # else the [route] has errors, reported there
                result.append(line.route(index, section))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not text.strip():
        raise Invalid("at least one route, one a line", "none")
    return tuple(result)


def _filters(text: str, ctx: Context) -> tuple[FilterConfig, ...]:
    """`filters`: names of [filter] sections, in the order the requests meet them."""
    result: list[FilterConfig] = []
    errors: list[Invalid] = []
    seen: set[str] = set()
    for name in text.split():
        try:
            reference("filter", name, ctx.filter_names)
            if name in seen:
                raise Invalid("each filter once", f"{name!r} twice")
        except Invalid as e:
            v.collect(errors, 0, e)
            continue
        seen.add(name)
        if name in ctx.filters:  # else the [filter] has errors, reported there
            result.append(ctx.filters[name])
    v.raise_all(errors)
    return tuple(result)


def _error_pages(text: str, ctx: Context) -> tuple[tuple[int, str], ...]:
    return v.error_pages(text, ctx.base_dir)


def _certificates(text: str, ctx: Context) -> tuple[CertificateSource, ...]:
    return tls.sources(text, ctx.base_dir)


def _ca_file(text: str, ctx: Context) -> str:
    return tls.ca_file(text, ctx.base_dir)


def _client_certificate(text: str, ctx: Context) -> Certificate:
    return tls.client_certificate(text, ctx.base_dir)


def _sni_routes(text: str, ctx: Context) -> tuple[SniRoute, ...]:
    """`routes` of a [tcp] with route_by = sni: lines of `NAME -> pool POOL`."""
    result: list[SniRoute] = []
    errors: list[Invalid] = []
    seen: set[str] = set()
    expected = "NAME -> pool POOL, NAME a server name or *.domain"
    for index, line in v.each_line(text):
        try:
            parts = v.words(line, "an SNI route")
            if not parts:
                continue
            if len(parts) != 4 or parts[1] != "->" or parts[2] != "pool":
                raise Invalid(expected, repr(line))
            name = parts[0].lower().rstrip(".")
            bare = name[2:] if name.startswith("*.") else name
            if not v.is_hostname(bare) or "*" in bare:
                raise Invalid(expected, repr(parts[0]))
            if name in seen:
                raise Invalid("each name once", f"{name!r} twice")
            seen.add(name)
            result.append(SniRoute(name, reference("pool", parts[3], ctx.pools)))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not result:
        raise Invalid(expected + ", one a line", "nothing")
    return tuple(result)


def _tls(field: str, parse: Callable[..., Any], context: bool = False) -> Key:
    return Key(parse, context=context, group="tls", field=field)


TLS_SERVER_KEYS: Mapping[str, Key] = {
    "certificates": _tls("certificates", _certificates, context=True),
    "tls_protocols": _tls("protocols", tls.protocols),
    "tls_ciphers": _tls("ciphers", tls.ciphers),
    "tls_ciphersuites": _tls("ciphersuites", tls.ciphersuites),
    "tls_prefer_server_ciphers": _tls("prefer_server_ciphers", v.boolean),
    "tls_session_tickets": _tls("session_tickets", v.boolean),
    "tls_session_cache": _tls("session_cache", v.boolean),
    "tls_session_timeout": _tls("session_timeout", v.positive_duration),
    "tls_verify_client": _tls("verify_client", v.choice("off", "optional", "required")),
    "tls_client_ca": _tls("client_ca", _ca_file, context=True),
    "expired_certificates": _tls("expired_certificates", v.choice("warn", "refuse")),
    "ocsp_stapling": _tls("ocsp_stapling", v.boolean),
    "ocsp_responder": _tls("ocsp_responder", tls.ocsp_responder),
    "acme": _tls("acme", acme_section.acme, context=True),
}
"""Keys of TLS termination, on [https] and [tcp] sections."""

TLS_CLIENT_KEYS: Mapping[str, Key] = {
    "tls": _tls("enabled", v.boolean),
    "tls_ca": _tls("ca", _ca_file, context=True),
    "tls_verify": _tls("verify", v.boolean),
    "tls_server_name": _tls("server_name", tls.server_name),
    "tls_certificate": _tls("certificate", _client_certificate, context=True),
}
"""A pool's keys for TLS to its servers."""


HTTP_KEYS: Mapping[str, Key] = {
    "listen": Key(v.endpoint, required=True),
    "routes": Key(_routes, required=True, context=True),
    "trusted_proxies": Key(v.networks),
    "accept_proxy": Key(v.boolean),
    "request_headers": Key(routes.header_rules),
    "response_headers": Key(routes.header_rules),
    "filters": Key(_filters, context=True),
    "via": Key(v.boolean),
    "cdn_loop": Key(tier.cdn_loop),
    "cdn_loop_max": Key(v.integer(0, 16)),
    "max_header_size": Key(v.size(1024, 1 << 20)),
    "max_headers": Key(v.integer(1, 10000)),
    "max_uri_length": Key(v.size(256, 1 << 20)),
    "max_body_size": Key(v.size(0, 1 << 40)),
    "header_timeout": Key(v.positive_duration),
    "body_timeout": Key(v.positive_duration),
    "keepalive_timeout": Key(v.positive_duration),
    "http2_max_streams": Key(v.integer(1, 10000)),
    "http2_stream_buffer": Key(v.size(16384, (1 << 31) - 1)),
    "connect_timeout": Key(v.positive_duration),
    "response_timeout": Key(v.positive_duration),
    "idle_timeout": Key(v.positive_duration),
    "retries": Key(v.integer(0, 100)),
    "error_pages": Key(_error_pages, context=True),
    "access_log": Key(v.log_target),
    "tunnel_timeout": Key(v.positive_duration),
    "max_tunnels": Key(v.integer(0)),
    "escaped_slashes": Key(v.choice(*ESCAPED_SLASHES)),
    "invalid_headers": Key(v.choice(*INVALID_HEADERS)),
    "trace_context": Key(v.choice(*TRACE_CONTEXT)),
    **otlp.KEYS,
    **compress.KEYS,
    **HTTP_SECURITY_KEYS,
}
"""Keys shared by [http] and [https]."""

WEBSOCKET_MESSAGE_KEYS = (
    "max_message_size",
    "max_frame_size",
    "max_messages_per_second",
    "ping_interval",
    "ping_timeout",
    "permessage_deflate",
    "max_connections_per_client",
    "max_connection_rate_per_client",
)
"""[websocket] keys that only mode = message acts on (passthrough is an HTTP listener: its
`access` answers 403, and per-client connection limits have no HTTP counterpart)."""

# One schema per section kind: key -> parser. Defaults live on the model classes.
SCHEMAS: Mapping[str, tuple[type, bool, Mapping[str, Key]]] = {
    # kind: (model class, takes a NAME, keys)
    "proxyd": (
        GlobalConfig,
        False,
        {
            "access_log": Key(v.log_target),
            "workers": Key(v.workers),
            "drain_timeout": Key(v.duration),
        },
    ),
    "admin": (
        AdminConfig,
        False,
        {
            "listen": Key(v.endpoint, required=True),
            "token": Key(v.bearer_token),
            "read_token": Key(v.bearer_token),
            "cluster": Key(cache_section.cluster),
            "cluster_name": Key(cache_section.cluster_name),
            "cluster_ca": Key(cache_section.redis_ca, context=True),
        },
    ),
    "pool": (
        PoolConfig,
        True,
        {
            "servers": Key(v.servers),
            "balance": Key(v.choice(*BALANCE_ALGORITHMS)),
            "hash_key": Key(tier.hash_key),
            "this_server": Key(tier.this_server),
            "parent": Key(_pool_name, context=True),
            "check": Key(v.check),
            "check_interval": Key(v.positive_duration),
            "check_timeout": Key(v.positive_duration),
            "rise": Key(v.integer(1, 100)),
            "fall": Key(v.integer(1, 100)),
            "max_fails": Key(v.integer(0)),
            "eject_time": Key(v.positive_duration),
            "eject_time_max": Key(v.positive_duration),
            "keepalive": Key(v.integer_or_unlimited(0)),
            "keepalive_timeout": Key(v.positive_duration),
            "sticky_cookie": Key(v.cookie_name),
            "max_queued": Key(v.integer(0, MAX_QUEUED)),
            "queue_timeout": Key(v.positive_duration),
            "protocol": Key(v.choice(*UPSTREAM_PROTOCOLS)),
            "h2_connections": Key(v.integer(1, 64)),
            **TLS_CLIENT_KEYS,
            **discovery.KEYS,
            **stick.KEYS,
        },
    ),
    "tcp": (
        TcpListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "pool": Key(_pool_name, context=True),
            "connect_timeout": Key(v.positive_duration),
            "idle_timeout": Key(v.positive_duration),
            "retries": Key(v.integer(0, 100)),
            "max_connections": Key(v.integer(0)),
            "on_max_connections": Key(v.choice("queue", "close")),
            "send_proxy": Key(v.choice("off", "v1", "v2")),
            "accept_proxy": Key(v.boolean),
            "access_log": Key(v.log_target),
            "buffer_size": Key(v.size(1024, 16 << 20)),
            "tcp_nodelay": Key(v.boolean),
            "route_by": Key(v.choice("sni")),
            "routes": Key(_sni_routes, context=True),
            "handshake_timeout": Key(v.positive_duration),
            **TLS_SERVER_KEYS,
            "tls_alpn": _tls("alpn", tls.alpn),
            **L4_ACCESS_KEYS,
            **L4_CLIENT_KEYS,
        },
    ),
    "udp": (
        UdpListenerConfig,
        True,
        {
            "listen": Key(v.udp_endpoint, required=True),
            "pool": Key(_pool_name, required=True, context=True),
            "protocol": Key(v.choice("raw", "dns", "sip")),
            "query_timeout": Key(v.positive_duration),
            "session_timeout": Key(v.positive_duration),
            "max_sessions": Key(v.integer(0)),
            "max_datagram_size": Key(v.size(1, 65535)),
            "retries": Key(v.integer(0, 100)),
            "access_log": Key(v.log_target),
            **L4_ACCESS_KEYS,
        },
    ),
    "websocket": (
        WebSocketListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "pool": Key(_pool_name, required=True, context=True),
            "mode": Key(v.choice("message", "passthrough")),
            "connect_timeout": Key(v.positive_duration),
            "retries": Key(v.integer(0, 100)),
            "handshake_timeout": Key(v.positive_duration),
            "idle_timeout": Key(v.positive_duration),
            "max_connections": Key(v.integer(0)),
            "allowed_origins": Key(v.origins),
            "max_message_size": Key(v.size(1, 1 << 40)),
            "max_frame_size": Key(v.size(1, 1 << 40)),
            "max_messages_per_second": Key(v.integer(0)),
            "ping_interval": Key(v.duration),
            "ping_timeout": Key(v.positive_duration),
            "permessage_deflate": Key(v.boolean),
            "accept_proxy": Key(v.boolean),
            "access_log": Key(v.log_target),
            **TLS_SERVER_KEYS,
            **L4_ACCESS_KEYS,
            **L4_CLIENT_KEYS,
        },
    ),
    "http": (
        HttpListenerConfig,
        True,
        {**HTTP_KEYS, "https_redirect": Key(tls.https_redirect), "h2c": Key(v.boolean)},
    ),
    "https": (
        HttpListenerConfig,
        True,
        {
            **HTTP_KEYS,
            **TLS_SERVER_KEYS,
            "hsts": Key(tls.hsts),
            "http2": Key(v.boolean),
        },
    ),
    "route": (
        RouteSection,
        True,
        {
            "pool": Key(_pool_name, context=True),
            "strip_prefix": Key(v.boolean),
            "rewrite": Key(routes.rewrite),
            "host": Key(v.host_header),
            "query_params": Key(routes.query_params),
            "upstream_method": Key(routes.upstream_method),
            "max_in_flight": Key(v.integer(0, MAX_QUEUED)),
            "max_queued": Key(v.integer(0, MAX_QUEUED)),
            "queue_timeout": Key(v.positive_duration),
            "request_json": Key(routes.json_operations),
            "response_json": Key(routes.json_operations),
            "max_json_body": Key(v.size(1, MAX_JSON_BODY)),
            "redirect": Key(routes.redirect_value),
            "respond": Key(routes.respond_value),
            "content_type": Key(routes.content_type),
            "request_headers": Key(routes.header_rules),
            "response_headers": Key(routes.header_rules),
            "filters": Key(_filters, context=True),
            **compress.KEYS,
            **ROUTE_SECURITY_KEYS,
        },
    ),
    **SECURITY_SCHEMAS,
    "acme": acme_section.SCHEMA,
    "gslb": gslb_section.SCHEMA,
}
