"""The service tree's TLS parts: listeners wrapped in TLS, certificates reloaded on demand."""

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


def test_reload_swaps_in_the_certificates_now_on_disk(tmp_path: Path) -> None:
    ca = TestCA()
    ca.issue(["old.example.test"]).write(tmp_path / "site.pem")
    proxy, tls = service(tmp_path)
    ca.issue(["new.example.test"]).write(tmp_path / "site.pem")
    events: list[dict[str, Any]] = []
    stop = capture(events)
    try:
        proxy.reload_certificates()
    finally:
        stop()
    assert tls.certificates[0].names == ("new.example.test",)
    assert any(e.get("count") == 1 and "reloaded" in e["log_format"] for e in events)


def test_a_reload_that_fails_keeps_the_old_certificates_and_says_why(tmp_path: Path) -> None:
    ca = TestCA()
    ca.issue(["old.example.test"]).write(tmp_path / "site.pem")
    proxy, tls = service(tmp_path)
    (tmp_path / "site.pem").write_bytes(ca.issue(["x.test"]).pem(with_key=False))
    events: list[dict[str, Any]] = []
    stop = capture(events)
    try:
        proxy.reload_certificates()
    finally:
        stop()
    assert tls.certificates[0].names == ("old.example.test",)
    [error] = [e for e in events if "not reloaded" in e.get("log_format", "")]
    assert "site.pem" in error["why"] and "private key" in error["why"]


def test_an_https_listener_listens_through_tls(tmp_path: Path) -> None:
    TestCA().issue(["a.test"]).write(tmp_path / "site.pem")
    reactor = MemoryReactorClock()
    proxy, _tls = service(tmp_path, reactor)
    proxy.bind()
    [listener] = proxy.listeners
    [(_port, factory, _backlog, _interface)] = reactor.tcpServers
    assert isinstance(factory, TLSMemoryBIOFactory)
    assert factory.wrappedFactory is listener.factory
