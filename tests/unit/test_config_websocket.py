"""The configuration of WebSocket: `[websocket NAME]`, `tunnel_timeout`/`max_tunnels` on HTTP
listeners, and `check = websocket`."""

from __future__ import annotations

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import (
    TlsClientConfig,
    WebSocketCheck,
    WebSocketListenerConfig,
)

POOL = "[pool chat]\nservers = 127.0.0.1:9001\n\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads(text, "proxyd.ini")
    return [str(e) for e in info.value.errors]


def websocket(*lines: str) -> str:
    """POOL, then `[websocket chat]` on line 4 with `listen` and `pool`, then `lines` from 7."""
    return POOL + "[websocket chat]\nlisten = tcp:8090\npool = chat\n" + "\n".join(lines) + "\n"


def test_defaults_are_message_mode_with_bounded_messages() -> None:
    [listener] = loads(websocket()).websocket
    assert listener == WebSocketListenerConfig("chat", "tcp:8090", "chat")
    assert listener.mode == "message"
    assert listener.max_message_size == 1 << 20 and listener.max_frame_size == 1 << 20
    assert listener.ping_interval == 30.0 and listener.ping_timeout == 10.0
    assert listener.idle_timeout == 3600.0 and listener.retries == 2
    assert listener.access_log == "-" and listener.tls is None


def test_every_key_is_read() -> None:
    [listener] = loads(
        websocket(
            "connect_timeout = 2s",
            "retries = 0",
            "handshake_timeout = 3s",
            "idle_timeout = 10m",
            "max_connections = 500",
            "allowed_origins = https://chat.example.com",
            "    https://*.Example.org/",
            "max_message_size = 64KiB",
            "max_frame_size = 16KiB",
            "max_messages_per_second = 20",
            "ping_interval = 0",
            "ping_timeout = 5s",
            "permessage_deflate = on",
            "access_log = off",
        )
    ).websocket
    assert (listener.connect_timeout, listener.retries, listener.handshake_timeout) == (
        2.0,
        0,
        3.0,
    )
    assert listener.idle_timeout == 600.0 and listener.max_connections == 500
    assert listener.allowed_origins == ("https://chat.example.com", "https://*.example.org")
    assert (listener.max_message_size, listener.max_frame_size) == (65536, 16384)
    assert listener.max_messages_per_second == 20
    assert (listener.ping_interval, listener.ping_timeout) == (0.0, 5.0)
    assert listener.permessage_deflate and listener.access_log == "off"


def test_the_global_access_log_is_inherited() -> None:
    text = "[proxyd]\naccess_log = /var/log/proxyd.log\n\n" + websocket()
    assert loads(text).websocket[0].access_log == "/var/log/proxyd.log"


def test_message_mode_keys_are_refused_in_passthrough() -> None:
    assert errors_of(websocket("mode = passthrough", "max_message_size = 1KiB")) == [
        "proxyd.ini:8: [websocket chat] max_message_size: expected 'max_message_size' only "
        "with mode = message; found mode = passthrough"
    ]


def test_per_client_limits_are_refused_in_passthrough_and_access_reaches_the_http_listener() -> (
    None
):
    assert errors_of(websocket("mode = passthrough", "max_connections_per_client = 4")) == [
        "proxyd.ini:8: [websocket chat] max_connections_per_client: expected "
        "'max_connections_per_client' only with mode = message; found mode = passthrough"
    ]
    [listener] = loads(websocket("mode = passthrough", "access =", "    deny all")).websocket
    http = listener.as_http()
    assert http.access is not None and not http.access.allows("127.0.0.1")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            "mode = messages",
            "proxyd.ini:7: [websocket chat] mode: expected 'message', 'passthrough'; "
            "found 'messages' (did you mean 'message'?)",
        ),
        (
            "allowed_origins = chat.example.com",
            "proxyd.ini:7: [websocket chat] allowed_origins: expected origins such as "
            "https://chat.example.com or https://*.example.com; found 'chat.example.com'",
        ),
        (
            "allowed_origins = https://a.example.com/path",
            "proxyd.ini:7: [websocket chat] allowed_origins: expected origins such as "
            "https://chat.example.com or https://*.example.com; found "
            "'https://a.example.com/path'",
        ),
        (
            "tls_protocols = TLSv1.3",
            "proxyd.ini:7: [websocket chat] tls_protocols: expected 'tls_protocols' only with "
            "certificates (TLS termination); found none",
        ),
        (
            "ping_timeout = 0",
            "proxyd.ini:7: [websocket chat] ping_timeout: expected a duration above zero; "
            "found '0'",
        ),
    ],
)
def test_bad_values_name_line_section_key(line: str, error: str) -> None:
    assert errors_of(websocket(line)) == [error]


def test_pool_and_listen_are_required_and_checked() -> None:
    assert errors_of(POOL + "[websocket chat]\npool = chats\n") == [
        "proxyd.ini:4: [websocket chat] listen: expected a 'listen' key; found none",
        "proxyd.ini:5: [websocket chat] pool: expected the name of a [pool] ('chat'); "
        "found 'chats' (did you mean 'chat'?)",
    ]


def test_tunnel_keys_on_http_listeners() -> None:
    text = POOL + "[http web]\nlisten = tcp:8080\nroutes = path / -> pool chat\n"
    [http] = loads(text).http
    assert (http.tunnel_timeout, http.max_tunnels) == (3600.0, 0)
    [http] = loads(text + "tunnel_timeout = 5m\nmax_tunnels = 100\n").http
    assert (http.tunnel_timeout, http.max_tunnels) == (300.0, 100)


@pytest.mark.parametrize(
    ("value", "check"),
    [
        ("websocket", WebSocketCheck()),
        ("websocket /chat", WebSocketCheck(path="/chat")),
        ("websocket /chat?x=1 ping", WebSocketCheck(path="/chat?x=1", ping=True)),
        ("websocket ping host chat.test", WebSocketCheck(host="chat.test", ping=True)),
    ],
)
def test_websocket_check(value: str, check: WebSocketCheck) -> None:
    pool = loads(f"[pool chat]\nservers = 127.0.0.1:9001\ncheck = {value}\n").pools["chat"]
    assert pool.check == check


def test_websocket_check_errors() -> None:
    assert errors_of("[pool chat]\nservers = 127.0.0.1:9001\ncheck = websocket /a pong\n") == [
        "proxyd.ini:3: [pool chat] check: expected 'websocket [PATH] [host NAME] [ping]', "
        "such as 'websocket /ws ping'; found 'pong' (did you mean 'ping'?)"
    ]


def test_websocket_check_on_a_tls_pool_runs_over_tls() -> None:
    text = (
        "[pool chat]\nservers = 127.0.0.1:9001\ncheck = websocket /\ntls = on\ntls_verify = off\n"
    )
    check = loads(text).pools["chat"].check
    assert isinstance(check, WebSocketCheck)
    assert check.tls == TlsClientConfig(enabled=True, verify=False)
