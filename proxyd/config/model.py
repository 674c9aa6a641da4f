"""The validated configuration tree: frozen attrs values, built only by proxyd.config.load.

Durations are float seconds, sizes are int bytes. Nothing here changes at run time; a reload
builds a new tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs


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


@attrs.frozen
class TcpCheck:
    """`check = tcp [send STR] [expect STR | expect_regex STR]`: connect, optionally converse."""

    send: bytes | None = None
    expect: bytes | None = None
    expect_regex: re.Pattern[bytes] | None = None

    kind = "tcp"


@attrs.frozen
class SmtpCheck:
    """`check = smtp [DOMAIN]`: 220 banner, EHLO DOMAIN, 250, QUIT."""

    domain: str = "proxyd.localhost"

    kind = "smtp"


@attrs.frozen
class MysqlCheck:
    """`check = mysql`: read the server's initial handshake packet, expect protocol 10."""

    kind = "mysql"


CheckConfig = TcpCheck | SmtpCheck | MysqlCheck

BALANCE_ALGORITHMS = ("round_robin", "least_conn", "random_two", "hash", "first")
"""The pool layer implements each of these (proxyd.pool.balance); config only names them."""


@attrs.frozen
class PoolConfig:
    """`[pool NAME]`: servers, how to balance between them, how to watch their health."""

    name: str
    servers: tuple[ServerConfig, ...]
    balance: str = "round_robin"
    """round_robin | least_conn | random_two | hash | first"""
    hash_key: str = "client_ip"
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


@attrs.frozen
class TcpListenerConfig:
    """`[tcp NAME]`: a raw TCP relay from `listen` to a pool."""

    name: str
    listen: str
    """A Twisted server endpoint string, e.g. `tcp:13306:interface=127.0.0.1`."""
    pool: str
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
    """Expect a PROXY protocol (v1 or v2) header from the client (a front load balancer)."""
    access_log: str = "-"
    """'-' for stdout, 'off', or a file path: one JSON line per connection."""
    buffer_size: int = 65536
    """Per direction: bytes read at a time, and bytes waiting to be written before the
    reading side is paused. Bounds a connection's memory to about 4 x this."""


@attrs.frozen
class GlobalConfig:
    """`[proxyd]`: process-wide settings."""

    access_log: str = "-"


@attrs.frozen
class Config:
    """A whole validated configuration file."""

    path: str
    proxyd: GlobalConfig
    pools: Mapping[str, PoolConfig]
    tcp: tuple[TcpListenerConfig, ...] = ()
