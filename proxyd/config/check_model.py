"""The health checks a pool's `check` key names, one frozen attrs class per kind
(proxyd.health runs them), and CheckConfig, any of them."""

from __future__ import annotations

import re

import attrs

from proxyd.config.tls_model import TlsClientConfig


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


@attrs.frozen
class HttpCheck:
    """`check = http [METHOD] [PATH] [host NAME] [expect CODES] [body STR]`: one HTTP/1.1
    request; the server is up when the status is in `expect` and the body holds `body`."""

    method: str = "GET"
    path: str = "/"
    host: str | None = None
    """Host header to send; None sends the server's address."""
    expect: tuple[tuple[int, int], ...] = ((200, 399),)
    """Inclusive status ranges; a single code is (code, code)."""
    body: bytes | None = None
    """A substring the response body must contain (the first 64 KiB are searched)."""

    kind = "http"


@attrs.frozen
class DnsCheck:
    """`check = dns NAME [TYPE] [expect RCODE[,RCODE...]]`: one query over UDP; the server is up
    when its answer has one of the expected rcodes."""

    name: str
    rdtype: str = "A"
    expect: tuple[str, ...] = ("NOERROR",)

    kind = "dns"


@attrs.frozen
class SipCheck:
    """`check = sip [URI]`: an OPTIONS request over UDP; the server is up when a final response
    (200-699) comes back."""

    uri: str | None = None
    """The Request-URI; None is `sip:HOST:PORT` of the server."""

    kind = "sip"


@attrs.frozen
class TlsCheck:
    """`check = tls [http ...]`: a TLS handshake that verifies as the pool's `tls_*` keys say,
    then, with `http ...`, that HTTP check over it. A pool with `tls = on` runs its `http`
    check this way too."""

    tls: TlsClientConfig
    http: HttpCheck | None = None

    kind = "tls"


@attrs.frozen
class WebSocketCheck:
    """`check = websocket [PATH] [host NAME] [ping]`: a WebSocket opening handshake to PATH;
    the server is up when it answers 101 (and, with `ping`, answers a ping with its pong)."""

    path: str = "/"
    host: str | None = None
    """Host header to send; None sends the server's address."""
    ping: bool = False
    tls: TlsClientConfig | None = None
    """Set by the loader for a pool with `tls = on`: the handshake runs over TLS (wss)."""

    kind = "websocket"


@attrs.frozen
class GrpcCheck:
    """`check = grpc [SERVICE]`: one grpc.health.v1.Health/Check call for SERVICE (default
    "", the server as a whole) over HTTP/2; the server is up when it answers SERVING."""

    service: str = ""
    tls: TlsClientConfig | None = None
    """Set by the loader for a pool with `tls = on`: the call goes over TLS (ALPN h2)."""

    kind = "grpc"


CheckConfig = (
    TcpCheck
    | SmtpCheck
    | MysqlCheck
    | HttpCheck
    | TlsCheck
    | DnsCheck
    | SipCheck
    | WebSocketCheck
    | GrpcCheck
)
