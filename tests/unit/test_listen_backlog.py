"""The listen backlog: the kernel's maximum (at least 511) for every stream listener whose
endpoint gives none, in one process and for workers."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from proxyd.accept_log import AcceptLog
from proxyd.listen_sockets import (
    DEFAULT_BACKLOG,
    MIN_BACKLOG,
    bind_stream,
    default_backlog,
    with_backlog,
)
from proxyd.listeners import ListenerService


def listen_backlog(sock: socket.socket) -> int:
    """A listening socket's backlog: Linux reports sk_max_ack_backlog as tcpi_sacked."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 28)[0])


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.parametrize(
    ("content", "backlog"),
    [
        (b"4096\n", 4096),
        (b"65535\n", 65535),
        (b"128\n", MIN_BACKLOG),  # older kernels: the kernel caps at 128 anyway
        (b"", MIN_BACKLOG),
        (b"many\n", MIN_BACKLOG),
        (None, MIN_BACKLOG),  # unreadable: not Linux, or no /proc
    ],
)
def test_the_default_backlog_is_somaxconn_at_least_511(
    tmp_path: Path, content: bytes | None, backlog: int
) -> None:
    path = tmp_path / "somaxconn"
    if content is not None:
        path.write_bytes(content)
    assert default_backlog(str(path)) == backlog
    assert MIN_BACKLOG == 511


def test_the_default_backlog_of_this_host_is_its_somaxconn() -> None:
    assert max(somaxconn(), 511) == DEFAULT_BACKLOG


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080", "tcp:8080:backlog=4096"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=4096"),
        ("tcp:0:127.0.0.1", "tcp:0:127.0.0.1:backlog=4096"),
        ("tcp6:8080:interface=\\:\\:1", "tcp6:8080:interface=\\:\\:1:backlog=4096"),
        ("unix:/run/p.sock:mode=660", "unix:/run/p.sock:mode=660:backlog=4096"),
        ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem:backlog=4096"),
        # A backlog given, by keyword or in its place, is the operator's.
        ("tcp:8080:backlog=20", "tcp:8080:backlog=20"),
        ("tcp:0:127.0.0.1:7", "tcp:0:127.0.0.1:7"),
        ("tcp6:0:7", "tcp6:0:7"),
        ("unix:/run/p.sock:660:30", "unix:/run/p.sock:660:30"),
        # Endpoints that take no backlog.
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("stdio:", "stdio:"),
    ],
)
def test_a_backlog_is_added_to_stream_endpoints_that_give_none(
    description: str, expected: str
) -> None:
    assert with_backlog(description, 4096) == expected


class _RealPorts(MemoryReactorClock):
    """A memory reactor whose listenTCP binds a real socket (never read from here)."""

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> tcp.Port:
        super().listenTCP(port, factory, backlog, interface)
        listening = tcp.Port(port, factory, backlog, interface, reactor=self)
        listening.startListening()
        return listening


class _Relay(Factory):
    protocol = Protocol

    def set_listening_port(self, port: Any) -> None:
        self.port = port


@pytest.fixture
def listeners() -> Iterator[list[ListenerService]]:
    made: list[ListenerService] = []
    yield made
    for listener in made:
        if listener.port is not None:
            listener.port.socket.close()


def test_a_listener_in_one_process_listens_with_the_default_backlog(
    listeners: list[ListenerService],
) -> None:
    reactor = _RealPorts()
    listener = ListenerService(reactor, "http web", "tcp:0:interface=127.0.0.1", _Relay())
    listeners.append(listener)
    listener.bind()
    [(_port, _factory, backlog, _interface)] = reactor.tcpServers
    assert backlog == DEFAULT_BACKLOG
    assert listen_backlog(listener.port.socket) == min(DEFAULT_BACKLOG, somaxconn())
    assert isinstance(listener.accept_log, AcceptLog)
    assert listener.port._logger.observer is listener.accept_log


def test_a_backlog_in_the_endpoint_wins(listeners: list[ListenerService]) -> None:
    reactor = _RealPorts()
    listener = ListenerService(reactor, "http web", "tcp:0:interface=127.0.0.1:backlog=7", _Relay())
    listeners.append(listener)
    listener.bind()
    assert listen_backlog(listener.port.socket) == 7


def test_the_admin_and_unix_listeners_get_the_default_backlog_too(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    ListenerService(reactor, "admin", "tcp:9901:interface=127.0.0.1", _Relay()).bind()
    path = tmp_path / "p.sock"
    ListenerService(reactor, "tcp u", f"unix:{path}", _Relay()).bind()
    assert [backlog for _, _, backlog, _ in reactor.tcpServers] == [DEFAULT_BACKLOG]
    assert [backlog for _, _, backlog, _, _ in reactor.unixServers] == [DEFAULT_BACKLOG]


def test_workers_sockets_get_the_default_backlog_and_tcp6_positional_arguments_are_read() -> None:
    shared = bind_stream(None, "tcp:0:interface=127.0.0.1", 2)
    try:
        expected = min(DEFAULT_BACKLOG, somaxconn())
        assert [listen_backlog(sock) for sock in shared.sockets] == [expected, expected]
    finally:
        shared.close()
    # tcp6:PORT:BACKLOG:INTERFACE, in Twisted's order (not tcp:'s PORT:INTERFACE:BACKLOG).
    shared = bind_stream(None, "tcp6:0:9:\\:\\:1", 1)
    try:
        [sock] = shared.sockets
        assert sock.getsockname()[0] == "::1"
        assert listen_backlog(sock) == 9
    finally:
        shared.close()
