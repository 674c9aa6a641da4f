"""Building a generation of the service tree from a validated Config: its pools, upstream
connection pools, access logs and relay listeners (not bound yet).

A reload builds the next generation from the one serving (design.md principle 8): pools whose
config is unchanged are kept as they are; changed ones are rebuilt around the same Server
objects (Pool's `previous`), so health, passive-failure and admin state and the connection
counts carry on; upstream pools are kept with their pool, access logs by their target. The
relays are always new: each connection keeps the relay (and so the config) it started on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from proxyd.accesslog import AccessLog
from proxyd.config.model import Address, Config
from proxyd.gslb.listeners import gslb_listeners
from proxyd.listeners import RelayListener, StartupError, StreamRelayListener, UdpListenerService
from proxyd.pool import Pool
from proxyd.relay.dns import DnsListener
from proxyd.relay.factory import Counted, http_counts, tcp_counts, websocket_counts
from proxyd.relay.http.h2_upstream_metrics import H2Metrics
from proxyd.relay.http.h2_upstreams import H2Upstreams
from proxyd.relay.http.listener import HttpRelayFactory
from proxyd.relay.http.upstream import ConnectionPool, Upstreams
from proxyd.relay.proxy_header import HeaderPolicy
from proxyd.relay.tcp import TcpRelayFactory
from proxyd.relay.udp import UdpListener
from proxyd.relay.websocket import WebSocketRelayFactory
from proxyd.relay.websocket_policy import OriginPolicy
from proxyd.resources import ProcessResources
from proxyd.tls import ClientTls


@attrs.define
class Generation:
    """What one config serves with: shared by its listeners, replaced at a reload."""

    config: Config
    pools: dict[str, Pool]
    upstreams: dict[str, Upstreams]
    """Upstream keep-alive connections, per pool, shared by every HTTP listener."""
    logs: dict[str, AccessLog] = attrs.field(factory=dict)
    """The access logs, by target."""
    listeners: list[RelayListener] = attrs.field(factory=list)

    def abandon(self, serving: Generation | None = None) -> None:
        """Stop the pools and upstream pools and close the access logs that `serving` does
        not use (all of them without `serving`): a reload refused, or a generation ended."""
        for name, pool in self.pools.items():
            if serving is None or serving.pools.get(name) is not pool:
                pool.stop()
        for name, upstream in self.upstreams.items():
            if serving is None or serving.upstreams.get(name) is not upstream:
                upstream.stop()
        for target, access_log in self.logs.items():
            if serving is None or serving.logs.get(target) is not access_log:
                access_log.close()

    def released_by(
        self, successor: Generation
    ) -> tuple[list[Pool], list[Upstreams], list[AccessLog]]:
        """The pools, upstream pools and access logs of this generation that `successor`
        does not use."""
        return (
            [pool for name, pool in self.pools.items() if successor.pools.get(name) is not pool],
            [
                upstream
                for name, upstream in self.upstreams.items()
                if successor.upstreams.get(name) is not upstream
            ],
            [log for target, log in self.logs.items() if target not in successor.logs],
        )


def build(
    reactor: Any,
    config: Config,
    serving: Generation | None = None,
    resources: ProcessResources | None = None,
) -> Generation:
    """The generation of `config`, from the one `serving` now if any. Raises StartupError or
    OSError (an error page or access log that cannot be read or opened) after undoing what
    it made. `resources` are the process's, which outlive generations (password-check
    threads, rate-limit tables' source)."""
    pools = _pools(reactor, config, serving)
    h2_metrics = resources.h2_upstreams if resources is not None else None
    generation = Generation(config, pools, _upstreams(reactor, config, pools, serving, h2_metrics))
    try:
        generation.listeners = _listeners(reactor, generation, serving, resources)
    except (StartupError, OSError):
        generation.abandon(serving)
        raise
    if resources is not None and resources.acme is not None:
        for listener in generation.listeners:
            tls = getattr(listener, "tls", None)
            if tls is not None and tls.config.acme is not None:
                resources.acme.attach(tls)
    return generation


def _pools(reactor: Any, config: Config, serving: Generation | None) -> dict[str, Pool]:
    """The pools of `config`: the same Pool where its config is unchanged, else a new one
    that carries the servers of the old one on (Pool's `previous`)."""
    pools: dict[str, Pool] = {}
    for name, pool_config in config.pools.items():
        old = serving.pools.get(name) if serving is not None else None
        if old is not None and old.config == pool_config:
            pools[name] = old
        else:
            pools[name] = Pool(pool_config, reactor, previous=old)
    return pools


def _upstreams(
    reactor: Any,
    config: Config,
    pools: Mapping[str, Pool],
    serving: Generation | None,
    h2_metrics: H2Metrics | None,
) -> dict[str, Upstreams]:
    """Each pool's upstream connections: kept (idle keep-alive connections and all) for a
    pool kept as it was. HTTP/2 pools count in `h2_metrics`."""
    upstreams: dict[str, Upstreams] = {}
    for name, pool_config in config.pools.items():
        if serving is not None and pools[name] is serving.pools.get(name):
            old = serving.upstreams.get(name)
            if old is not None:
                upstreams[name] = old
                continue
        tls = pool_config.tls
        if pool_config.protocol == "http1":
            upstreams[name] = ConnectionPool(
                reactor,
                pool_config,
                ClientTls(name, tls, [b"http/1.1"]) if tls.enabled else None,
            )
        else:
            upstreams[name] = H2Upstreams(
                reactor,
                pool_config,
                ClientTls(name, tls, [b"h2"]) if tls.enabled else None,
                h2_metrics,
            )
    return upstreams


def _listeners(
    reactor: Any,
    generation: Generation,
    serving: Generation | None,
    resources: ProcessResources | None = None,
) -> list[RelayListener]:
    """A listener, not bound yet, with a new relay for each listener of the generation's
    config. The access logs they write to go into the generation's `logs`: those `serving`
    has open already, or opened now."""
    config, pools, upstreams, logs = (
        generation.config,
        generation.pools,
        generation.upstreams,
        generation.logs,
    )
    open_logs = serving.logs if serving is not None else {}

    def access_log(target: str) -> AccessLog:
        if target not in logs:
            logs[target] = open_logs.get(target) or AccessLog.open(target)
        return logs[target]

    stapling = resources.ocsp if resources is not None else None
    listeners: list[RelayListener] = []
    tcp_tls = {name: ClientTls(name, pc.tls) for name, pc in config.pools.items() if pc.tls.enabled}
    for tcp in config.tcp:
        tcp_relay = TcpRelayFactory(
            reactor, tcp, pools, access_log(tcp.access_log), tcp_tls, stapling
        )
        name = f"tcp {tcp.name}"
        # A plain [tcp] listener reads the header in its preamble; with TLS it comes first.
        below_tls = tcp.accept_proxy and tcp.tls is not None
        header = _proxy_header(
            name,
            below_tls,
            tcp.handshake_timeout,
            "handshake_timeout",
            tcp_relay,
            tcp_relay.proxy_header_refused,
        )
        listeners.append(
            StreamRelayListener(reactor, name, tcp.listen, tcp_relay, tcp_counts, header)
        )
    for udp in config.udp:
        kind = DnsListener if udp.protocol == "dns" else UdpListener
        relay = kind(reactor, udp, pools[udp.pool], access_log(udp.access_log))
        listeners.append(UdpListenerService(reactor, f"udp {udp.name}", udp.listen, relay))
    for http in config.http:
        http_relay = HttpRelayFactory(
            reactor,
            http,
            pools,
            upstreams,
            access_log(http.access_log),
            read_error_pages(http.error_pages),
            resources=resources,
        )
        name = f"{http.kind} {http.name}"
        header = _proxy_header(
            name, http.accept_proxy, http.header_timeout, "header_timeout", http_relay
        )
        listeners.append(
            StreamRelayListener(reactor, name, http.listen, http_relay, http_counts, header)
        )
    for ws in config.websocket:
        name = f"websocket {ws.name}"
        if ws.mode == "message":
            pool_tls = config.pools[ws.pool].tls
            ws_relay = WebSocketRelayFactory(
                reactor,
                ws,
                pools,
                access_log(ws.access_log),
                ClientTls(ws.pool, pool_tls, [b"http/1.1"]) if pool_tls.enabled else None,
                stapling,
            )
            header = _proxy_header(
                name, ws.accept_proxy, ws.handshake_timeout, "handshake_timeout", ws_relay
            )
            listeners.append(
                StreamRelayListener(reactor, name, ws.listen, ws_relay, websocket_counts, header)
            )
        else:
            passthrough = HttpRelayFactory(
                reactor,
                ws.as_http(),
                pools,
                upstreams,
                access_log(ws.access_log),
                websocket_only=OriginPolicy(ws.allowed_origins),
                resources=ProcessResources(ocsp=stapling),
            )
            header = _proxy_header(
                name, ws.accept_proxy, ws.handshake_timeout, "handshake_timeout", passthrough
            )
            listeners.append(
                StreamRelayListener(reactor, name, ws.listen, passthrough, http_counts, header)
            )
    for gslb in config.gslb:
        listeners.extend(gslb_listeners(reactor, gslb, pools))
    return listeners


def _proxy_header(
    name: str,
    accept_proxy: bool,
    timeout: float,
    timeout_word: str,
    relay: Counted,
    record: Callable[[Address | None, str, float], None] | None = None,
) -> HeaderPolicy | None:
    """How the listener `name` reads PROXY headers below its relay, if it accepts them
    (proxyd.relay.proxy_header)."""
    if not accept_proxy:
        return None
    return HeaderPolicy(name, timeout, timeout_word, lambda: relay.stats, record)


def read_error_pages(pages: tuple[tuple[int, str], ...]) -> dict[int, bytes]:
    """The error pages' bodies, read once at start (the config check saw them readable)."""
    bodies: dict[int, bytes] = {}
    for status, path in pages:
        try:
            with open(path, "rb") as f:
                bodies[status] = f.read()
        except OSError as e:
            raise StartupError(f"proxyd: cannot read error page {path}: {e.strerror}") from None
    return bodies
