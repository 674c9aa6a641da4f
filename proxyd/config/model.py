"""The validated configuration tree: frozen attrs values, built only by proxyd.config.load.

Durations are float seconds, sizes are int bytes. Nothing here changes at run time; a reload
builds a new tree. This module holds the tree's trunk (the file, its pools and listeners);
its TLS parts are in proxyd.config.tls_model, the health checks in
proxyd.config.check_model and the HTTP routes in proxyd.config.route_model, all of them
importable from here too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import attrs

from proxyd.access.networks import AccessList
from proxyd.config.acme_model import AcmeConfig
from proxyd.config.auth_model import AuthConfig
from proxyd.config.cache_model import CacheConfig
from proxyd.config.check_model import (
    CheckConfig,
    DnsCheck,
    GrpcCheck,
    HttpCheck,
    MysqlCheck,
    SipCheck,
    SmtpCheck,
    TcpCheck,
    TlsCheck,
    WebSocketCheck,
)
from proxyd.config.compress_model import CompressConfig
from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.config.gslb_model import GslbConfig
from proxyd.config.otlp_model import OtlpConfig
from proxyd.config.ratelimit_model import RateLimitConfig, RedisStore
from proxyd.config.route_model import (
    FilterConfig,
    HeaderRule,
    ProxyAction,
    RedirectAction,
    RespondAction,
    RouteAction,
    RouteConfig,
    RouteMatch,
    RouteSecurity,
)
from proxyd.config.security_model import (
    OFF,
    CorsConfig,
    Off,
    Rate,
    RuleConfig,
    SecurityHeadersConfig,
)
from proxyd.config.stick_model import StickConfig
from proxyd.config.tls_model import (
    DEFAULT_CIPHERS,
    DEFAULT_CIPHERSUITES,
    TLS_PROTOCOLS,
    Certificate,
    CertificateSource,
    TlsClientConfig,
    TlsServerConfig,
)
from proxyd.config.udp_listen import UdpListen

__all__ = [
    "BALANCE_ALGORITHMS",
    "DEFAULT_CIPHERS",
    "DEFAULT_CIPHERSUITES",
    "ESCAPED_SLASHES",
    "OFF",
    "TLS_PROTOCOLS",
    "TRACE_CONTEXT",
    "UPSTREAM_PROTOCOLS",
    "AccessList",
    "AcmeConfig",
    "Address",
    "AdminConfig",
    "AuthConfig",
    "Certificate",
    "CertificateSource",
    "CheckConfig",
    "Config",
    "CorsConfig",
    "DnsCheck",
    "FilterConfig",
    "GlobalConfig",
    "GrpcCheck",
    "HeaderRule",
    "HttpCheck",
    "HttpListenerConfig",
    "MysqlCheck",
    "Off",
    "PoolConfig",
    "ProxyAction",
    "Rate",
    "RedirectAction",
    "RespondAction",
    "RouteAction",
    "RouteConfig",
    "RouteMatch",
    "RouteSecurity",
    "RuleConfig",
    "SecurityHeadersConfig",
    "ServerConfig",
    "SipCheck",
    "SmtpCheck",
    "SniRoute",
    "TcpCheck",
    "TcpListenerConfig",
    "TlsCheck",
    "TlsClientConfig",
    "TlsServerConfig",
    "UdpListenerConfig",
    "WebSocketCheck",
    "WebSocketListenerConfig",
]


@attrs.frozen
class Address:
    """A host and port; IPv6 hosts are held without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class ServerConfig:
    """One backend server of a pool, as written on a `servers` line."""

    address: Address
    weight: int = 1
    backup: bool = False
    max_connections: int = 0
    """Most connections at once to this server; 0 is unlimited."""
    down: bool = False
    """Administratively off: never picked, never checked."""

    @property
    def name(self) -> str:
        return str(self.address)


BALANCE_ALGORITHMS = ("round_robin", "least_conn", "random_two", "hash", "first")
UPSTREAM_PROTOCOLS = ("http1", "h2", "h2c")
"""The pool layer implements each of these (proxyd.pool.balance); config only names them."""

ESCAPED_SLASHES = ("reject", "decode", "keep")
"""[http] escaped_slashes: what a request path with %2F, %5C or a backslash gets
(proxyd.relay.http.routing)."""

TRACE_CONTEXT = ("off", "on", "restart")
"""[http] trace_context: W3C Trace Context on requests sent upstream (proxyd.filters.trace_context):
none, the client's trace continued (or a new one begun), a new trace on every request."""


@attrs.frozen
class PoolConfig:
    """`[pool NAME]`: servers, how to balance between them, how to watch their health."""

    name: str
    servers: tuple[ServerConfig, ...]
    balance: str = "round_robin"
    """round_robin | least_conn | random_two | hash | first"""
    hash_key: str = "client_ip"
    """client_ip | uri | header NAME (kept as `header name`): what balance = hash keys on.
    HTTP relays key on the request (uri, header); the others always on the client's IP."""
    this_server: str | None = None
    """The server of `servers` that is this node (a tier of caches: docs/cdn.md): it is never
    connected to; the requests the ring gives it, and those a peer sent, go to `parent`."""
    parent: str | None = None
    """The pool the requests this node owns go to (the shield or the origin); with
    this_server."""
    check: CheckConfig | None = None
    check_interval: float = 2.0
    check_timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    max_fails: int = 3
    """Consecutive connection failures reported by relays before a server is ejected; 0 never."""
    eject_time: float = 10.0
    """First ejection's length; each further ejection in a row doubles it."""
    eject_time_max: float = 300.0
    keepalive: int | None = None
    """HTTP relays: idle upstream connections kept open per server for reuse; 0 disables
    reuse, None keeps every one (until keepalive_timeout)."""
    keepalive_timeout: float = 60.0
    """HTTP relays: an idle upstream connection is closed after this long."""
    sticky_cookie: str | None = None
    """HTTP relays: name of the cookie that pins a client to a server; None is no stickiness."""
    tls: TlsClientConfig = TlsClientConfig()  # noqa: RUF009 (frozen: safe to share)
    max_queued: int = 0
    """Requests (or connections) that may wait for room when every server up is at its
    max_connections; 0: none wait, they are refused at once."""
    queue_timeout: float = 5.0
    """The longest one waits in that queue."""
    protocol: str = "http1"
    """HTTP relays: what proxyd speaks to the servers: http1 | h2 (HTTP/2 over TLS, ALPN h2;
    needs `tls = on`) | h2c (HTTP/2 in cleartext, with prior knowledge)."""
    h2_connections: int = 1
    """h2 and h2c pools: the most HTTP/2 connections per server; a new one is opened only
    when every open one carries as many streams as the server allows."""
    discovery: DiscoveryConfig | None = None
    """Servers found at run time (DNS SRV or etcd: proxyd.discovery), beside `servers`."""
    stick: StickConfig | None = None
    """HTTP relays: the stick table (`stick_on`...: proxyd.filters.stick); None: none."""


@attrs.frozen
class TcpListenerConfig:
    """`[tcp NAME]`: a raw TCP relay from `listen` to a pool."""

    name: str
    listen: str
    """A Twisted server endpoint string, e.g. `tcp:13306:interface=127.0.0.1`."""
    pool: str | None
    """The pool; with route_by = sni, the pool of clients whose name no route matches (None:
    such clients are refused)."""
    connect_timeout: float = 5.0
    idle_timeout: float = 600.0
    retries: int = 2
    """Further servers tried after a failed connect before the client is closed."""
    max_connections: int = 0
    """Most client connections at once; 0 is unlimited."""
    on_max_connections: str = "queue"
    """queue (leave them in the kernel's accept queue) | close (accept and close at once)"""
    send_proxy: str = "off"
    """off | v1 | v2: PROXY protocol header sent to the backend."""
    accept_proxy: bool = False
    """Expect a PROXY protocol (v1 or v2) header from the client (a front load balancer):
    read by the relay's preamble, or with `certificates` below TLS
    (proxyd.relay.proxy_header)."""
    access_log: str = "-"
    """'-' for stdout, 'off', or a file path: one JSON line per connection."""
    buffer_size: int = 262144
    """Per direction: bytes read at a time, and bytes waiting to be written before the
    reading side is paused. Bounds a connection's memory to about 4 x this. 256 KiB: with
    64 KiB reads a bulk stream cost twice the kernel time per byte (docs/performance.md)."""
    tcp_nodelay: bool = True
    """TCP_NODELAY on both sockets (nginx stream's `tcp_nodelay`): a small write leaves at
    once instead of waiting for the peer's delayed ACK."""
    tls: TlsServerConfig | None = None
    """TLS terminated here (`certificates` given): the pool gets the plaintext."""
    route_by: str | None = None
    """`sni`: read the client's TLS ClientHello (without decrypting) and pick the pool by its
    server name through `routes`; the encrypted stream is relayed untouched."""
    routes: tuple[SniRoute, ...] = ()
    handshake_timeout: float = 10.0
    """How long a client has to finish its TLS handshake (or, with route_by = sni, to send its
    ClientHello, or with accept_proxy its PROXY header)."""
    access: AccessList | None = None
    """Allow/deny rules on the client's address (after the PROXY header, when accepted):
    others are closed at accept."""
    max_connections_per_client: int | None = None
    """Most connections open at once from one client address; None is unlimited."""
    max_connection_rate_per_client: Rate | None = None
    """Most new connections per second (or minute) from one client address; None is
    unlimited."""


@attrs.frozen
class SniRoute:
    """One line of a `[tcp]` section's `routes` with route_by = sni: NAME -> pool POOL."""

    name: str
    """Lower case; `*.example.com` matches one label in front of `example.com`."""
    pool: str


@attrs.frozen
class HttpListenerConfig:
    """`[http NAME]`: an HTTP/1.1 reverse proxy on `listen`, routing requests to pools."""

    name: str
    listen: str
    routes: tuple[RouteConfig, ...]
    access_log: str = "-"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Clients whose X-Forwarded-* and Forwarded values are kept and extended."""
    accept_proxy: bool = False
    """Every connection begins with a PROXY protocol (v1 or v2) header (a front L4 load
    balancer), read below TLS within header_timeout; its source is the client
    (proxyd.relay.proxy_header)."""
    request_headers: tuple[HeaderRule, ...] = ()
    """Rules applied to every request before the route's own."""
    filters: tuple[FilterConfig, ...] = ()
    """Filters every request of the listener runs through, before its route's."""
    response_headers: tuple[HeaderRule, ...] = ()
    via: bool = True
    """Add `Via: 1.1 proxyd` to requests and responses (RFC 9110 7.6.3)."""
    cdn_loop: str | None = None
    """The pseudonym added to CDN-Loop (RFC 8586) of the requests proxied; a request that
    already carries it more than cdn_loop_max times is refused with 508
    (proxyd.filters.cdn_loop)."""
    cdn_loop_max: int = 1
    """Times a request may carry cdn_loop when it arrives: once is a peer's request."""
    max_header_size: int = 32768
    """Request line and header block together; larger is answered 431."""
    max_headers: int = 100
    """More header fields are answered 431."""
    max_uri_length: int = 8192
    """A longer request target is answered 414."""
    max_body_size: int = 0
    """A larger request body is answered 413; 0 is unlimited."""
    header_timeout: float = 10.0
    """From a request's first byte to its complete header block; 408 then close."""
    body_timeout: float = 60.0
    """Longest wait between two reads of a request body; 408 (or a close) after."""
    keepalive_timeout: float = 75.0
    """An idle client connection between requests is closed after this long (an HTTP/2 one
    without an open stream)."""
    http2: bool = True
    """[https]: offer HTTP/2 by ALPN (`h2`), before HTTP/1.1."""
    h2c: bool = False
    """[http]: accept HTTP/2 with prior knowledge (a connection that opens with its
    preface)."""
    http2_max_streams: int = 128
    """Concurrent streams an HTTP/2 client may open (SETTINGS_MAX_CONCURRENT_STREAMS)."""
    http2_stream_buffer: int = 256 * 1024
    """Each HTTP/2 stream's receive window (the request body it holds unread) and the
    response bytes it holds for the client's window before its server is paused."""
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    """From the request's end to the response's first byte; 504 after."""
    idle_timeout: float = 60.0
    """Longest silence in either direction while a response is streaming; the exchange is
    cut after it."""
    retries: int = 2
    """Further attempts after the first, on other servers where there are any."""
    error_pages: tuple[tuple[int, str], ...] = ()
    """(status, file path): a file's contents are the body of proxyd's own answers with that
    status."""
    tls: TlsServerConfig | None = None
    """Set for `[https NAME]`: TLS terminated below the same HTTP relay."""
    hsts: str | None = None
    """[https]: the Strict-Transport-Security value added to every response."""
    https_redirect: int | None = None
    """[http]: answer every request with a 308 redirect to https on this port."""
    tunnel_timeout: float = 3600.0
    """An upgraded connection (WebSocket) with no byte either way for this long is closed."""
    max_tunnels: int = 0
    """Most upgraded connections at once; further upgrade requests are answered 503; 0 is
    unlimited."""
    escaped_slashes: str = "reject"
    """A request path with %2F or %5C (any case) or a backslash: reject (400) | decode (as
    '/', then normalised) | keep (as data, routed and sent as they are)."""
    access: AccessList | None = None
    """Allow/deny rules on the client's address (through trusted_proxies' X-Forwarded-For):
    others are answered 403. A route's list is checked after this one."""
    allowed_methods: frozenset[str] | None = None
    """Methods served (GET allows HEAD too); others are answered 405 with Allow. None: any."""
    max_query_length: int = 0
    """A longer query (after '?') is answered 414; 0 is unlimited."""
    rules: tuple[RuleConfig, ...] = ()
    """[rule] sections every request is checked against, before its route's."""
    invalid_headers: str = "drop"
    """drop | refuse | pass: request fields whose name has characters other than letters,
    digits and '-' (a CGI backend reads X_Forwarded_For as X-Forwarded-For)."""
    auth: AuthConfig | None = None
    """The [auth] every route's requests authenticate with, unless the route says otherwise."""
    cors: CorsConfig | None = None
    """The CORS policy of every route that names none."""
    hide_headers: tuple[str, ...] = ()
    """Response fields removed beside the default ones (lower case)."""
    pass_headers: tuple[str, ...] = ()
    """Default hidden response fields let through (lower case)."""
    server_header: str = "proxyd"
    """proxyd's Server value on responses that have none left; "" sends none."""
    intercept_errors: frozenset[int] = frozenset()
    """Statuses of servers' responses whose body is replaced by proxyd's error page."""
    security_headers: SecurityHeadersConfig | None = None
    """The security_headers preset; None is off."""
    ratelimits: tuple[RateLimitConfig, ...] = ()
    """[ratelimit] sections every request is counted against, before its route's."""
    cache: CacheConfig | None = None
    """The [cache] of the routes that name none (docs/cache.md)."""
    trace_context: str = "off"
    """off | on | restart: send a W3C traceparent upstream, continuing the client's trace
    (`on`) or always beginning one (`restart`), and log its trace id. Off by default: it
    costs every request of the listener about 2 µs (docs/gateway.md)."""
    compress: CompressConfig = CompressConfig()  # noqa: RUF009 (frozen: safe to share)
    """The `compress*` and `gunzip` keys (docs/compression.md): every route's, unless the
    route has its own."""
    otlp: OtlpConfig | None = None
    """The `otlp_*` keys: one span per request exported to a collector (only with
    trace_context on or restart); None exports none."""

    @property
    def kind(self) -> str:
        return "https" if self.tls is not None else "http"


@attrs.frozen
class UdpListenerConfig(UdpListen):
    """`[udp NAME]`: a datagram relay from `listen` to a pool, a session per client address."""

    name: str
    listen: str
    """`udp:PORT[:interface=ADDRESS]` (Twisted has no udp: server endpoint; proxyd reads it)."""
    pool: str
    protocol: str = "raw"
    """raw: datagrams relayed as they are, within a session per client address; dns: each
    query relayed on its own, its ID rewritten (proxyd.relay.dns)."""
    query_timeout: float = 2.0
    """protocol = dns: a query without an answer for this long goes to another server."""
    session_timeout: float = 30.0
    """A session with no datagram either way for this long is closed."""
    max_sessions: int = 10000
    """Most sessions at once; datagrams from further clients are dropped (and counted); 0 is
    unlimited."""
    max_datagram_size: int = 65507
    """Larger datagrams (either way) are dropped and counted."""
    retries: int = 2
    """Further servers a session moves to when its server refuses datagrams (ICMP port
    unreachable)."""
    access_log: str = "-"
    """One JSON line per session, when it ends."""
    access: AccessList | None = None
    """Allow/deny rules on the client's address: datagrams from others are dropped."""


@attrs.frozen
class WebSocketListenerConfig:
    """`[websocket NAME]`: WebSocket clients on `listen` relayed to a pool, as messages
    (`mode = message`: proxyd speaks WebSocket to both sides) or as bytes after the opening
    handshake (`mode = passthrough`)."""

    name: str
    listen: str
    pool: str
    mode: str = "message"
    """message | passthrough"""
    connect_timeout: float = 5.0
    retries: int = 2
    """Further servers tried after a failed connect or a refused handshake (not 101)."""
    handshake_timeout: float = 10.0
    """How long a client has to complete its opening handshake (and a server to answer it)."""
    idle_timeout: float = 3600.0
    """A connection with no message (no byte, in passthrough) either way for this long is
    closed with 1001."""
    max_connections: int = 0
    """Most client connections at once; further handshakes are answered 503; 0 is
    unlimited."""
    allowed_origins: tuple[str, ...] = ()
    """Origin values accepted (`*` matches any characters); empty accepts any. Others are
    answered 403."""
    max_message_size: int = 1 << 20
    """message mode: a larger message closes the connection with 1009."""
    max_frame_size: int = 1 << 20
    """message mode: a larger frame closes the connection with 1009."""
    max_messages_per_second: int = 0
    """message mode: a client sending more messages than this in a second is closed with 1008;
    0 is unlimited."""
    ping_interval: float = 30.0
    """message mode: a ping to each side after this long without traffic from it; 0 is off."""
    ping_timeout: float = 10.0
    """message mode: a side whose pong does not come within this long is closed."""
    permessage_deflate: bool = False
    """message mode: accept the client's permessage-deflate offer (RFC 7692)."""
    accept_proxy: bool = False
    """Every connection begins with a PROXY protocol (v1 or v2) header, read below TLS
    within handshake_timeout; its source is the client (proxyd.relay.proxy_header)."""
    access_log: str = "-"
    """One JSON line per connection, when it ends."""
    tls: TlsServerConfig | None = None
    """TLS terminated here (`certificates` given): clients speak wss."""
    access: AccessList | None = None
    """Allow/deny rules on the client's address: others are closed at accept."""
    max_connections_per_client: int | None = None
    """Most connections open at once from one client address; None is unlimited."""
    max_connection_rate_per_client: Rate | None = None
    """Most new connections per second (or minute) from one client address; None is
    unlimited."""

    def as_http(self) -> HttpListenerConfig:
        """mode = passthrough: an HTTP listener with one route to the pool, whose upgraded
        connections are this listener's connections."""
        return HttpListenerConfig(
            name=self.name,
            listen=self.listen,
            routes=(RouteConfig(name="*/", match=RouteMatch(), action=ProxyAction(self.pool)),),
            access_log=self.access_log,
            header_timeout=self.handshake_timeout,
            connect_timeout=self.connect_timeout,
            response_timeout=self.handshake_timeout,
            retries=self.retries,
            tunnel_timeout=self.idle_timeout,
            max_tunnels=self.max_connections,
            tls=self.tls,
            escaped_slashes="keep",  # one route, to one pool: no path rule to get round
            access=self.access,
            accept_proxy=self.accept_proxy,
        )


@attrs.frozen
class GlobalConfig:
    """`[proxyd]`: process-wide settings."""

    access_log: str = "-"
    workers: int = 1
    """Processes that serve the listeners; above 1, a master process binds the listeners,
    runs the health checks and supervises them (proxyd.workers). `auto` is read as the
    number of CPUs proxyd may run on."""
    drain_timeout: float = 30.0
    """At a graceful stop (SIGTERM), how long connections in flight may take to finish before
    the rest are closed."""


@attrs.frozen
class AdminConfig:
    """`[admin]`: the admin API and /metrics listener (proxyd.admin)."""

    listen: str
    token: str | None = None
    """The bearer token every request must carry; required unless `listen` is loopback."""
    read_token: str | None = None
    """A bearer token that may read (status, metrics, config) but change nothing."""
    cluster: RedisStore | None = None
    """The Redis through which the servers' admin states (drain, maint) are shared with the
    other nodes (proxyd.admin.shared_state); None: this node's alone."""
    cluster_name: str = "proxyd"
    """The cluster's name in Redis (`proxyd:admin:NAME`)."""


@attrs.frozen
class Config:
    """A whole validated configuration file."""

    path: str
    proxyd: GlobalConfig
    pools: Mapping[str, PoolConfig]
    tcp: tuple[TcpListenerConfig, ...] = ()
    http: tuple[HttpListenerConfig, ...] = ()
    udp: tuple[UdpListenerConfig, ...] = ()
    websocket: tuple[WebSocketListenerConfig, ...] = ()
    admin: AdminConfig | None = None
    auth: Mapping[str, AuthConfig] = attrs.field(factory=dict)
    """The [auth] sections, by name (for the warnings about their files)."""
    caches: Mapping[str, CacheConfig] = attrs.field(factory=dict)
    """The [cache] sections, by name, used by a route or not (the admin API purges them)."""
    acme: Mapping[str, AcmeConfig] = attrs.field(factory=dict)
    """The [acme] sections, by name (proxyd.acme obtains their certificates)."""
    gslb: tuple[GslbConfig, ...] = ()
    """The [gslb] listeners: authoritative DNS from the pools' health (proxyd.gslb)."""
