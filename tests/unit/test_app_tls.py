"""The service tree's TLS parts: listeners wrapped in TLS, certificates read anew at a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory

from proxyd.app import ProxydService
from proxyd.config.load import loads
from tests.certs import TestCA

CONFIG = """
[proxyd]
access_log = off
[pool web]
servers = 127.0.0.1:9001
[https front]
listen = tcp:0:interface=127.0.0.1
certificates = site.pem
routes =
    path / -> pool web
"""


def service(tmp_path: Path, reactor: Any = None) -> tuple[ProxydService, Any]:
    config = loads(CONFIG, str(tmp_path / "proxyd.ini"))
    proxy = ProxydService(reactor or MemoryReactorClock(), config)
    [listener] = proxy.listeners
    return proxy, listener.factory.tls


def capture(events: list[dict[str, Any]]) -> Any:
    globalLogPublisher.addObserver(events.append)
    return lambda: globalLogPublisher.removeObserver(events.append)


def test_a_reload_serves_the_certificates_now_on_disk_to_new_connections(tmp_path: Path) -> None:
    ca = TestCA()
    ca.issue(["old.example.test"]).write(tmp_path / "site.pem")
    (tmp_path / "proxyd.ini").write_text(CONFIG)
    reactor = MemoryReactorClock()
    proxy, old_tls = service(tmp_path, reactor)
    proxy.bind()
    [(_port, listening, *_rest)] = reactor.tcpServers
    ca.issue(["new.example.test"]).write(tmp_path / "site.pem")
    assert proxy.reload().reloaded
    [listener] = proxy.listeners
    # The port keeps its factory (a Front), which now builds through TLS around the new relay.
    assert listener.port is not None and listener.front is listening
    assert listening.current.wrappedFactory is listener.factory
    assert listener.factory.tls.certificates[0].names == ("new.example.test",)
    assert old_tls.certificates[0].names == ("old.example.test",)  # open connections' own
    assert len(reactor.tcpServers) == 1  # the same socket, not bound again


def test_a_reload_that_fails_keeps_the_old_certificates_and_says_why(tmp_path: Path) -> None:
    ca = TestCA()
    ca.issue(["old.example.test"]).write(tmp_path / "site.pem")
    (tmp_path / "proxyd.ini").write_text(CONFIG)
    proxy, tls = service(tmp_path)
    (tmp_path / "site.pem").write_bytes(ca.issue(["x.test"]).pem(with_key=False))
    events: list[dict[str, Any]] = []
    stop = capture(events)
    try:
        outcome = proxy.reload()
    finally:
        stop()
    assert not outcome.reloaded and outcome.generation == 1
    [listener] = proxy.listeners
    assert listener.factory.tls is tls
    [error] = [e for e in events if e.get("error") and "site.pem" in e["error"]]
    assert "private key" in error["error"] and "[https front]" in error["error"]


def test_an_https_listener_listens_through_tls(tmp_path: Path) -> None:
    TestCA().issue(["a.test"]).write(tmp_path / "site.pem")
    reactor = MemoryReactorClock()
    proxy, _tls = service(tmp_path, reactor)
    proxy.bind()
    [listener] = proxy.listeners
    [(_port, front, _backlog, _interface)] = reactor.tcpServers
    factory = front.current  # the port's factory delegates to the relay's, inside TLS
    assert isinstance(factory, TLSMemoryBIOFactory)
    assert factory.wrappedFactory is listener.factory
