"""`[websocket NAME]` with `mode = message`: an autobahn client, proxyd's relay and autobahn
backends wired with iosim on one MemoryReactorClock; the policy core on its own."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim

from proxyd.accesslog import AccessLog
from proxyd.config.load import loads
from proxyd.config.model import (
    Address,
    PoolConfig,
    ServerConfig,
    TlsClientConfig,
    WebSocketListenerConfig,
)
from proxyd.pool import Pool
from proxyd.relay.websocket import WebSocketRelayFactory
from proxyd.relay.websocket_legs import ReactorTimer
from proxyd.relay.websocket_policy import (
    MessageRate,
    OriginPolicy,
    backend_request,
    client_response_headers,
    close_reason_bytes,
    parse_head,
    request_target,
    sendable,
)
from proxyd.tls import ClientTls, ServerTls
from tests.certs import TestCA

CLIENT = IPv4Address("TCP", "203.0.113.7", 51000)
LISTENER = IPv4Address("TCP", "198.51.100.1", 8090)
SERVERS = (Address("10.0.0.1", 9001), Address("10.0.0.2", 9001))
URL = "ws://chat.example:8090/chat?room=1&x=%20"
NAME = "chat.example.test"


# Peers: an autobahn client and autobahn backends that record what happens to them.


class Client(WebSocketClientProtocol):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.opened = False
        self.closed: tuple[int | None, str | None] | None = None
        self.response: Any = None

    def onConnect(self, response: Any) -> None:
        self.response = response

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (code, reason)

    @property
    def status(self) -> str:
        """The status line of the answer to the client's handshake."""
        return str(self.http_status_line)


class Raw(Protocol):
    received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Backend(WebSocketServerProtocol):  # type: ignore[misc]
    factory: BackendFactory

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.closed: tuple[int | None, str | None] | None = None
        self.request: ConnectionRequest | None = None

    def onConnect(self, request: ConnectionRequest) -> Any:
        self.request = request
        self.factory.connections.append(self)
        if self.factory.deny is not None:
            raise ConnectionDeny(self.factory.deny)
        chosen = request.protocols[-1] if request.protocols else None
        return chosen, {"Set-Cookie": ["a=1; Path=/", "b=2"], "X-Backend": "one"}

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))
        if self.factory.echo:
            self.sendMessage(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        if self.factory.pong:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (code, reason)


class BackendFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = Backend  # type: ignore[assignment]

    def __init__(self, reactor: Any, **options: Any) -> None:
        super().__init__(reactor=reactor)
        self._batched_timer = ReactorTimer(reactor)
        self.setProtocolOptions(failByDrop=False, openHandshakeTimeout=0)
        self.connections: list[Backend] = []
        self.deny: int | None = options.get("deny")
        self.echo: bool = options.get("echo", True)
        self.pong: bool = options.get("pong", True)

    @property
    def last(self) -> Backend:
        return self.connections[-1]


class Net:
    """proxyd's relay on a MemoryReactorClock; clients and backends joined to it by iosim.

    `backends` says what each server address does when the relay connects: a BackendFactory
    answers, "refuse" refuses the connect, "silent" accepts and never answers, and a missing
    address leaves the connect pending."""

    def __init__(self, client_tls: ClientTls | None = None, **options: Any) -> None:
        self.reactor: Any = cast(Any, MemoryReactorClock())
        self.reactor.advance(1_700_000_000)
        self.config = WebSocketListenerConfig(
            name="chat", listen="tcp:8090", pool="chat", **options
        )
        self.pool = Pool(
            PoolConfig(
                name="chat", servers=tuple(ServerConfig(a) for a in SERVERS), balance="first"
            ),
            self.reactor,
        )
        self.log = io.StringIO()
        self.factory = WebSocketRelayFactory(
            self.reactor, self.config, {"chat": self.pool}, AccessLog(self.log, "test"), client_tls
        )
        tls = self.factory.tls
        factory: Any = self.factory
        self.listening: Any = factory if tls is None else tls.wrap(factory, self.reactor)
        self.backends: dict[Address, Any] = {a: BackendFactory(self.reactor) for a in SERVERS}
        self.pumps: list[iosim.IOPump] = []
        self._connected = 0

    def backend(self, index: int = 0) -> BackendFactory:
        return self.backends[SERVERS[index]]  # type: ignore[no-any-return]

    def client(self, url: str = URL, protocols: list[str] | None = None, **headers: str) -> Client:
        origin = headers.pop("Origin", None)
        factory = WebSocketClientFactory(
            url, protocols=protocols, headers=headers, origin=origin, reactor=self.reactor
        )
        factory._batched_timer = ReactorTimer(self.reactor)
        factory.setProtocolOptions(
            serverConnectionDropTimeout=0, openHandshakeTimeout=0, failByDrop=False
        )
        factory.protocol = Client
        return self.connect_client(factory.buildProtocol(None))

    def connect_client(self, client: Any) -> Any:
        leg = self.listening.buildProtocol(CLIENT)
        self._join(leg, client, CLIENT, LISTENER)
        return client

    def _join(self, server: Any, client: Any, peer: Any, host: Any) -> None:
        server_io = iosim.FakeTransport(server, True, hostAddress=host, peerAddress=peer)
        client_io = iosim.FakeTransport(client, False, hostAddress=peer, peerAddress=host)
        self.pumps.append(iosim.connect(server, server_io, client, client_io, greet=False))
        self.flush()

    def flush(self) -> None:
        for _ in range(1000):
            self.reactor.advance(0)  # Twisted's TLS layer writes from a call at 0 seconds
            moved = [pump.pump(advanceClock=False) for pump in self.pumps]
            if not any(moved) and not self._complete_connects():
                return
        raise AssertionError("still moving after 1000 rounds")

    def _complete_connects(self) -> bool:
        pending = self.reactor.tcpClients[self._connected :]
        for host, port, factory, _timeout, _bind in list(pending):
            self._connected += 1
            behaviour = self.backends.get(Address(host, port))
            connector = self.reactor.connectors[self._connected - 1]
            if behaviour is None:
                continue
            if behaviour == "refuse":
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                continue
            leg = factory.buildProtocol(IPv4Address("TCP", host, port))
            if leg is None:
                continue
            peer = IPv4Address("TCP", "10.0.0.254", 40000 + self._connected)
            backend = Protocol() if behaviour == "silent" else behaviour.buildProtocol(peer)
            self._join(backend, leg, peer, IPv4Address("TCP", host, port))
        return bool(pending)

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.flush()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def assert_finished(self, connections: int = 1) -> None:
        """Every TCP connection closed, every connection logged, nothing held."""
        for pump in self.pumps:
            assert pump.clientIO.disconnected and pump.serverIO.disconnected
        assert len(self.lines()) == connections
        assert self.factory.active == 0
        assert [server.active for server in self.pool.servers] == [0, 0]


def wire(protocol: Any) -> Any:
    """A peer's iosim transport (typed loosely: zope interfaces do not type for mypy)."""
    return protocol.transport


def opened(net: Net, **kw: Any) -> Client:
    client = net.client(**kw)
    assert client.opened, client.status
    return client


# Relaying.


def test_text_and_binary_messages_pass_both_ways_one_for_one() -> None:
    net = Net()
    client = opened(net)
    for payload, binary in [(b"hello", False), (b"", False), (b"\x00\xff" * 300, True)]:
        client.sendMessage(payload, binary)
    net.flush()
    expected = [(b"hello", False), (b"", False), (b"\x00\xff" * 300, True)]
    assert net.backend().last.messages == expected
    assert client.messages == expected
    net.backend().last.sendMessage("ünïcode".encode(), False)
    net.flush()
    assert client.messages[-1] == ("ünïcode".encode(), False)
    assert (net.factory.messages_in, net.factory.messages_out) == (3, 4)


def test_a_fragmented_message_arrives_whole() -> None:
    net = Net()
    client = opened(net)
    client.sendMessage(b"abcdefghij", True, fragmentSize=3)
    net.flush()
    assert net.backend().last.messages == [(b"abcdefghij", True)]


def test_the_backend_sees_the_clients_path_query_and_end_to_end_fields() -> None:
    net = Net()
    opened(
        net,
        Cookie="sid=abc; theme=dark",
        Authorization="Bearer t0k",
        Origin="https://chat.example.com",
        **{"X-Forwarded-For": "192.0.2.66", "Connection": "Upgrade, X-Hop", "X-Hop": "1"},
    )
    request = net.backend().last.request
    assert request is not None
    assert request.path == "/chat"
    assert request.params == {"room": ["1"], "x": [" "]}
    headers = request.headers
    assert headers["host"] == "chat.example:8090"
    assert headers["cookie"] == "sid=abc; theme=dark"
    assert headers["authorization"] == "Bearer t0k"
    assert headers["origin"] == "https://chat.example.com"
    assert headers["user-agent"].startswith("AutobahnPython")
    assert headers["x-forwarded-for"] == "203.0.113.7"  # the client's own is not trusted
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "chat.example:8090"
    assert headers["forwarded"] == 'for=203.0.113.7;host="chat.example:8090";proto=http'
    assert "x-hop" not in headers
    assert "sec-websocket-extensions" not in headers


def test_the_clients_subprotocols_are_offered_and_the_backends_choice_returned() -> None:
    net = Net()
    client = opened(net, protocols=["v2.chat", "v1.chat"])
    assert net.backend().last.request.protocols == ["v2.chat", "v1.chat"]  # type: ignore[union-attr]
    assert client.response.protocol == "v1.chat"
    assert client.response.headers["set-cookie"] == "a=1; Path=/, b=2"
    assert client.response.headers["x-backend"] == "one"
    assert "server" not in client.response.headers
    assert net.lines() == [] and net.factory.active == 1


def test_each_transport_is_the_others_producer_and_a_loss_does_not_close_the_other() -> None:
    net = Net()
    opened(net)
    client_io, server_io = net.pumps[0].serverIO, net.pumps[1].clientIO
    calls: list[str] = []
    server_io.pauseProducing = lambda: calls.append("pause backend")
    server_io.resumeProducing = lambda: calls.append("resume backend")
    client_io.producer.pauseProducing()
    client_io.producer.resumeProducing()
    assert calls == ["pause backend", "resume backend"]
    assert server_io.producer is not None and server_io.streamingProducer
    client_io.producer.stopProducing()  # what a transport does to its producer on its loss
    assert not server_io.disconnecting


# Closes.


def test_a_client_close_reaches_the_backend_with_its_code_and_reason() -> None:
    net = Net()
    client = opened(net)
    client.sendClose(4000, "bye now")
    net.flush()
    assert net.backend().last.closed == (4000, "bye now")
    assert client.closed == (4000, "bye now")  # autobahn's answer echoes it
    net.assert_finished()
    line = net.lines()[0]
    assert line["close"] == "client_closed"
    assert (line["client_close_code"], line["client_close_reason"]) == (4000, "bye now")


def test_a_backend_close_reaches_the_client_with_its_code_and_reason() -> None:
    net = Net()
    client = opened(net)
    net.backend().last.sendCloseFrame(1011, b"internal error")
    net.flush()
    assert client.closed == (1011, "internal error")
    net.assert_finished()
    assert net.lines()[0]["close"] == "server_closed"


def test_a_close_without_a_code_is_passed_on_without_one() -> None:
    net = Net()
    client = opened(net)
    client.sendClose()
    net.flush()
    assert net.backend().last.closed == (None, None)
    net.assert_finished()


def test_a_backend_dropping_its_tcp_connection_closes_the_client_with_1001() -> None:
    net = Net()
    client = opened(net)
    wire(net.backend().last).loseConnection()
    net.flush()
    assert client.closed == (1001, "backend closed the connection")
    net.assert_finished()
    assert net.lines()[0]["close"] == "server_dropped"
    assert net.lines()[0]["backend_close_code"] == 1006


def test_a_client_dropping_its_tcp_connection_closes_the_backend_with_1001() -> None:
    net = Net()
    client = opened(net)
    wire(client).loseConnection()
    net.flush()
    assert net.backend().last.closed == (1001, "client went away")
    net.assert_finished()
    assert net.lines()[0]["close"] == "client_dropped"


def test_a_backend_that_never_drops_its_connection_after_closing_is_aborted() -> None:
    net = Net()
    client = opened(net)
    backend = net.backend().last
    backend.dropConnection = lambda abort=False: None  # type: ignore[method-assign]
    client.sendClose(1000)
    net.flush()
    assert client.closed == (1000, None)
    assert not net.pumps[1].clientIO.disconnected
    net.advance(5)
    net.assert_finished()


def test_the_access_log_line_says_who_what_and_how_much() -> None:
    net = Net()
    client = opened(net, protocols=["v1"])
    client.sendMessage(b"12345", True)
    net.flush()
    net.advance(1.5)
    client.sendClose(1000, "done")
    net.flush()
    (line,) = net.lines()
    assert line == {
        "time": "2023-11-14T22:13:20.000Z",
        "listener": "chat",
        "client": "203.0.113.7:51000",
        "backend": "10.0.0.1:9001",
        "bytes_in": 5,
        "bytes_out": 5,
        "duration": 1.5,
        "connect_attempts": 1,
        "close": "client_closed",
        "messages_in": 1,
        "messages_out": 1,
        "client_close_code": 1000,
        "client_close_reason": "done",
        "backend_close_code": 1000,
        "backend_close_reason": None,  # its answer to the close passed on
        "subprotocol": "v1",
    }


# Policies.


def test_an_origin_not_allowed_is_answered_403_without_a_connect() -> None:
    origins = ("https://chat.example.com", "https://*.chat.example.com")
    net = Net(allowed_origins=origins)
    refused = net.client(Origin="https://evil.example")
    assert refused.status.startswith("HTTP/1.1 403") and not refused.opened
    nameless = net.client()
    assert nameless.status.startswith("HTTP/1.1 403")
    assert net.reactor.tcpClients == []
    assert opened(net, Origin="https://eu.chat.example.com")
    assert opened(net, Origin="HTTPS://Chat.Example.com")
    lines = net.lines()
    assert [line["close"] for line in lines] == ["origin_refused", "origin_refused"]


def test_over_max_connections_is_answered_503() -> None:
    net = Net(max_connections=1)
    first = opened(net)
    refused = net.client()
    assert refused.status.startswith("HTTP/1.1 503")
    assert net.lines()[0]["close"] == "max_connections"
    first.sendClose(1000)
    net.flush()
    assert opened(net)


def test_a_message_over_max_message_size_closes_with_1009_and_the_other_side_1001() -> None:
    net = Net(max_message_size=100, max_frame_size=100)
    client = opened(net)
    client.sendMessage(b"x" * 100, True)
    client.sendMessage(b"x" * 101, True)
    net.flush()
    assert client.closed is not None and client.closed[0] == 1009
    assert net.backend().last.messages == [(b"x" * 100, True)]
    assert net.backend().last.closed == (1001, "client connection failed (1009)")
    net.assert_finished()
    assert net.lines()[0]["close"] == "message_too_big"


def test_a_backend_message_over_max_message_size_closes_the_backend_with_1009() -> None:
    net = Net(max_message_size=100)
    client = opened(net)
    net.backend().last.sendMessage(b"x" * 200, True)
    net.flush()
    closed = net.backend().last.closed
    assert closed is not None and closed[0] == 1009
    assert client.closed == (1001, "backend connection failed (1009)")
    net.assert_finished()


def test_a_frame_over_max_frame_size_closes_with_1009() -> None:
    net = Net(max_message_size=1000, max_frame_size=10)
    client = opened(net)
    client.sendMessage(b"y" * 30, True, fragmentSize=10)
    client.sendMessage(b"y" * 11, True)
    net.flush()
    assert net.backend().last.messages == [(b"y" * 30, True)]
    assert client.closed is not None and client.closed[0] == 1009


def test_more_messages_a_second_than_allowed_close_the_client_with_1008() -> None:
    net = Net(max_messages_per_second=3)
    client = opened(net)
    for i in range(3):
        client.sendMessage(b"%d" % i)
    net.flush()
    net.advance(1)
    for i in range(4):
        client.sendMessage(b"%d" % i)
    net.flush()
    assert len(net.backend().last.messages) == 6
    assert client.closed == (1008, "message rate exceeded")
    assert net.backend().last.closed == (1001, "client message rate exceeded")
    net.assert_finished()
    assert net.lines()[0]["close"] == "message_rate"


def test_a_side_not_answering_pings_is_closed_and_its_peer_gets_1001() -> None:
    net = Net(ping_interval=20, ping_timeout=5)
    net.backends[SERVERS[0]] = BackendFactory(net.reactor, pong=False)
    client = opened(net)
    net.advance(20)
    assert client.closed is None
    net.advance(5)
    assert client.closed == (1001, "backend did not answer a ping")
    net.assert_finished()
    assert net.lines()[0]["close"] == "ping_timeout"


def test_pings_answered_keep_the_connection_open() -> None:
    net = Net(ping_interval=20, ping_timeout=5, idle_timeout=3600)
    client = opened(net)
    for _ in range(10):
        net.advance(10)
    assert client.closed is None


def test_no_message_either_way_for_idle_timeout_closes_both_with_1001() -> None:
    net = Net(idle_timeout=60, ping_interval=10)
    client = opened(net)
    net.advance(50)
    client.sendMessage(b"still here")
    net.flush()
    net.advance(50)
    assert client.closed is None  # the message counted; the pings did not
    net.advance(10)
    assert client.closed == (1001, "idle timeout")
    assert net.backend().last.closed == (1001, "idle timeout")
    net.assert_finished()
    assert net.lines()[0]["close"] == "idle_timeout"


def test_a_client_that_never_finishes_its_handshake_is_dropped() -> None:
    net = Net(handshake_timeout=5)
    silent = Protocol()
    net.connect_client(silent)
    net.advance(5)
    net.assert_finished()
    assert net.lines()[0]["close"] == "handshake_timeout"
    assert net.reactor.tcpClients == []


def test_a_server_that_never_answers_the_handshake_makes_a_504_and_a_failure() -> None:
    net = Net(handshake_timeout=5)
    net.backends[SERVERS[0]] = "silent"
    client = net.client()
    assert client.response is None and not client.opened
    net.advance(5)
    assert client.status.startswith("HTTP/1.1 504")
    assert net.pool.servers[0].consecutive_failures == 1
    net.assert_finished()
    assert net.lines()[0]["close"] == "server_handshake_timeout"


@pytest.mark.parametrize("on", [True, False])
def test_permessage_deflate_is_accepted_from_the_client_only_when_on(on: bool) -> None:
    net = Net(permessage_deflate=on)
    factory = WebSocketClientFactory(URL, reactor=net.reactor)
    factory._batched_timer = ReactorTimer(net.reactor)

    def accept(response: Any) -> Any:
        if isinstance(response, PerMessageDeflateResponse):
            return PerMessageDeflateResponseAccept(response)
        return None

    factory.setProtocolOptions(
        perMessageCompressionOffers=[PerMessageDeflateOffer()],
        perMessageCompressionAccept=accept,
        serverConnectionDropTimeout=0,
    )
    factory.protocol = Client
    client = net.connect_client(factory.buildProtocol(None))
    assert client.opened
    assert bool(client.websocket_extensions_in_use) is on
    client.sendMessage(b"squeeze me " * 20)
    net.flush()
    assert client.messages == [(b"squeeze me " * 20, False)]
    backend = net.backend().last
    assert backend.websocket_extensions_in_use == []
    assert backend.request is not None and "sec-websocket-extensions" not in backend.request.headers


# Servers that fail.


def test_a_backend_refusing_the_handshake_is_retried_then_502() -> None:
    net = Net(retries=1)
    for address in SERVERS:
        net.backends[address] = BackendFactory(net.reactor, deny=404)
    client = net.client()
    assert client.status.startswith("HTTP/1.1 502")
    assert [len(net.backends[a].connections) for a in SERVERS] == [1, 1]
    assert [s.consecutive_failures for s in net.pool.servers] == [1, 1]
    net.assert_finished(connections=1)
    line = net.lines()[0]
    assert (line["close"], line["connect_attempts"]) == ("connect_failed", 2)


def test_a_refused_connect_moves_on_to_the_next_server() -> None:
    net = Net()
    net.backends[SERVERS[0]] = "refuse"
    client = opened(net)
    client.sendMessage(b"hi")
    net.flush()
    assert net.backend(1).last.messages == [(b"hi", False)]
    assert net.pool.servers[0].consecutive_failures == 1
    assert net.pool.servers[1].active == 1


def test_no_retries_left_is_a_502() -> None:
    net = Net(retries=0)
    net.backends[SERVERS[0]] = "refuse"
    client = net.client()
    assert client.status.startswith("HTTP/1.1 502")
    assert len(net.reactor.tcpClients) == 1


def test_no_server_up_is_a_503_without_a_connect() -> None:
    net = Net()
    for server in net.pool.servers:
        net.pool.set_health(server, False, "down")
    client = net.client()
    assert client.status.startswith("HTTP/1.1 503")
    assert net.reactor.tcpClients == []
    net.assert_finished()
    assert net.lines()[0]["close"] == "no_server"


def test_a_client_leaving_while_the_server_connects_stops_the_attempt() -> None:
    net = Net()
    del net.backends[SERVERS[0]]  # the connect stays pending
    client = net.client()
    wire(client).loseConnection()
    net.flush()
    assert net.reactor.connectors[0].stoppedConnecting
    net.assert_finished()
    assert net.lines()[0]["close"] == "client_closed"


# TLS on both legs, with real handshakes.


def test_wss_from_the_client_and_to_the_server(tmp_path: Path) -> None:
    ca = TestCA()
    ca.issue([NAME]).write(tmp_path / "chat.pem")
    config = loads(
        "[pool chat]\nservers = 10.0.0.1:9001\n"
        "[websocket chat]\nlisten = tcp:0\npool = chat\ncertificates = chat.pem\n",
        str(tmp_path / "proxyd.ini"),
    )
    trust = TlsClientConfig(
        enabled=True, ca=str(ca.write_ca(tmp_path / "ca.pem")), server_name=NAME
    )
    net = Net(ClientTls("chat", trust, [b"http/1.1"]), tls=config.websocket[0].tls)
    wrapped: Any = ClientTls("test", trust).wrap
    tls = config.websocket[0].tls
    assert tls is not None
    backend_factory: Any = net.backend()
    server_tls = ServerTls("backend", attrs.evolve(tls, alpn=("http/1.1",)))
    net.backends[SERVERS[0]] = server_tls.wrap(backend_factory, net.reactor)
    factory = WebSocketClientFactory(f"wss://{NAME}:8090/chat", reactor=net.reactor)
    factory._batched_timer = ReactorTimer(net.reactor)
    factory.setProtocolOptions(serverConnectionDropTimeout=0)
    factory.protocol = Client
    client = net.connect_client(
        wrapped(factory, NAME, net.reactor).buildProtocol(None)
    ).wrappedProtocol
    assert client.opened, client.status
    client.sendMessage(b"over TLS twice")
    net.flush()
    backend = net.backends[SERVERS[0]].wrappedFactory.last
    assert client.messages == [(b"over TLS twice", False)]
    assert backend.request.headers["x-forwarded-proto"] == "https"
    client.sendClose(1000)
    net.flush()
    net.assert_finished()
    assert net.lines()[0]["tls_version"].startswith("TLSv1")


# Malformed client traffic.


def test_a_request_that_is_no_websocket_handshake_is_answered_and_logged() -> None:
    net = Net()
    raw = Raw()
    net.connect_client(raw)
    wire(raw).write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # no Upgrade
    net.flush()
    assert raw.received.startswith(b"HTTP/1.1 426 ")
    net.assert_finished()
    assert net.lines()[0]["close"] == "bad_handshake"


def test_invalid_utf8_in_a_text_message_closes_the_client_with_1007() -> None:
    net = Net()
    client = opened(net)
    client.sendMessage(b"\xff\xfe", False)
    net.flush()
    assert client.closed is not None and client.closed[0] == 1007
    assert net.backend().last.closed == (1001, "client connection failed (1007)")
    net.assert_finished()
    assert net.lines()[0]["close"] == "protocol_error"


def test_an_unmasked_client_frame_closes_the_client_with_1002() -> None:
    net = Net()
    client = opened(net)
    wire(client).write(b"\x81\x02hi")  # a client must mask its frames
    net.flush()
    assert client.closed is not None and client.closed[0] == 1002
    net.assert_finished()


def test_answers_to_messages_before_a_bad_frame_reach_the_client_before_its_close() -> None:
    net = Net()
    client = opened(net)
    masked = b"\x81\x82\x00\x00\x00\x00hi"  # "hi", masked with a zero key
    wire(client).write(masked + b"\x81\x02hi")  # then an unmasked frame: the client fails
    net.flush()
    assert client.messages == [(b"hi", False)]  # the server's echo came first
    assert client.closed is not None and client.closed[0] == 1002
    assert net.backend().last.closed == (1001, "client connection failed (1002)")
    net.assert_finished()


def test_a_server_that_does_not_answer_the_close_does_not_hold_the_failing_client() -> None:
    net = Net()
    client = opened(net)
    net.backend().last.onCloseFrame = lambda code, reason: None  # type: ignore[method-assign,assignment]  # never answers a close
    wire(client).write(b"\x81\x02hi")
    net.flush()
    assert client.closed is None
    net.reactor.advance(2.0)  # CLOSE_TIMEOUT
    net.flush()
    assert client.closed is not None and client.closed[0] == 1002


def test_a_client_failed_mid_frame_is_read_on_in_step_and_its_close_found() -> None:
    # Autobahn's case 5.14: frames sent in pieces, the failure deferred while the server
    # answers; the bytes of the next frame that arrive after the failure must be read as that
    # frame's, not as a new frame's header that would swallow the client's close.
    net = Net()
    client = opened(net)
    net.backend().last.onCloseFrame = lambda code, reason: None  # type: ignore[method-assign,assignment]  # never answers a close
    bad = b"\x00\x80\x00\x00\x00\x00"  # a continuation with nothing to continue: 1002
    # A masked text frame whose key, read as a header, is a masked 65535-byte binary frame.
    text = b"\x81\x86" + b"\x82\xfe\xff\xff" + b"\x00" * 6
    wire(client).write(bad + text[:2])
    net.flush()
    net.reactor.advance(2.0)  # CLOSE_TIMEOUT: the client is failed now
    wire(client).write(text[2:])  # the rest of the frame arrives after the failure
    net.flush()
    assert client.closed is not None and client.closed[0] == 1002
    net.assert_finished()


def test_a_broken_close_frame_is_answered_at_once() -> None:
    net = Net()
    client = opened(net)
    net.backend().last.onCloseFrame = lambda code, reason: None  # type: ignore[method-assign,assignment]  # never answers a close
    wire(client).write(b"\x88\x82\x00\x00\x00\x00\x03\xe7")  # close code 999: invalid
    net.flush()
    assert client.closed is not None and client.closed[0] == 1002


# The sans-IO policy.


def test_origin_patterns_match_whole_origins_with_star_as_any_characters() -> None:
    policy = OriginPolicy(("https://*.example.com", "null"))
    assert policy.allows("https://a.b.example.com")
    assert policy.allows("null")
    assert policy.allows("https://x.example.com/")
    assert not policy.allows("https://example.com")
    assert not policy.allows("https://x.example.com.evil")
    assert not policy.allows(None)
    assert OriginPolicy(()).allows(None)


def test_the_message_rate_counts_in_fixed_one_second_windows() -> None:
    rate = MessageRate(2)
    assert [rate.allow(t) for t in (10.0, 10.5, 10.9)] == [True, True, False]
    assert [rate.allow(t) for t in (11.0, 11.1, 11.2)] == [True, True, False]
    assert all(MessageRate(0).allow(10.0) for _ in range(1000))


def test_request_targets_keep_the_query_and_lose_an_absolute_forms_authority() -> None:
    assert request_target("/a?b=c") == "/a?b=c"
    assert request_target("ws://host:1/a/b?q=1") == "/a/b?q=1"
    assert request_target("http://host") == "/"


def test_the_backend_request_replaces_forwarding_fields_and_brackets_ipv6() -> None:
    head = backend_request(
        target="/x",
        client_fields=[("Host", "h"), ("Forwarded", "for=1.2.3.4"), ("Cookie", "a=b")],
        host="h",
        client_ip="2001:db8::1",
        secure=True,
        protocols=[],
        key="k",
    )
    line, fields = parse_head(head)
    assert line == "GET /x HTTP/1.1"
    assert fields == [
        ("Host", "h"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "k"),
        ("Sec-WebSocket-Version", "13"),
        ("Cookie", "a=b"),
        ("X-Forwarded-For", "2001:db8::1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "h"),
        ("Forwarded", 'for="[2001:db8::1]";host=h;proto=https'),
    ]


def test_response_headers_keep_end_to_end_fields_grouped() -> None:
    fields = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "x"),
        ("Set-Cookie", "a=1"),
        ("Server", "x"),
        ("Set-Cookie", "b=2"),
    ]
    assert client_response_headers(fields) == {"Set-Cookie": ["a=1", "b=2"]}


def test_close_reasons_are_cut_to_fit_a_close_frame_on_a_character_boundary() -> None:
    reason = close_reason_bytes("é" * 100)
    assert reason is not None and len(reason) == 122 and reason.decode() == "é" * 61
    assert close_reason_bytes(None) is None
    assert [sendable(c) for c in (None, 1000, 1005, 1006, 1015, 4999, 999)] == [
        True,
        True,
        False,
        False,
        False,
        True,
        False,
    ]


def test_a_failure_admitting_a_client_is_logged_and_answered_500() -> None:
    net = Net()
    net.factory.origins = None  # type: ignore[assignment]
    with capturedLogs() as logs:
        client = net.client()
    assert client.status.startswith("HTTP/1.1 500")
    assert any(log.get("log_failure") is not None for log in logs)
    net.assert_finished()


# A graceful stop: drain, then close_all.


def fired(d: Any) -> bool:
    results: list[object] = []
    d.addBoth(results.append)
    return bool(results)


def test_drain_with_no_connection_fires_at_once() -> None:
    net = Net()
    assert fired(net.factory.drain())


def test_drain_fires_only_once_the_open_connections_have_ended() -> None:
    net = Net()
    client = opened(net)
    drained = net.factory.drain()
    client.sendMessage(b"still relayed")
    net.flush()
    assert client.messages == [(b"still relayed", False)] and not fired(drained)
    client.sendClose(1000)
    net.flush()
    assert fired(drained)
    net.assert_finished()
    assert net.lines()[0]["close"] == "client_closed"


def test_a_handshake_arriving_during_a_drain_is_refused_503() -> None:
    net = Net()
    silent = Protocol()
    net.connect_client(silent)  # accepted before the listener stopped, handshake yet to come
    drained = net.factory.drain()
    client = net.client()
    assert client.status.startswith("HTTP/1.1 503") and net.reactor.tcpClients == []
    assert net.lines()[0]["close"] == "shutdown"
    assert not fired(drained)  # the silent one is still there
    net.factory.close_all()
    net.flush()
    assert fired(drained)
    assert [line["close"] for line in net.lines()] == ["shutdown", "shutdown"]


def test_close_all_closes_both_ends_with_1001_logs_shutdown_then_the_drain_fires() -> None:
    net = Net()
    client = opened(net)
    drained = net.factory.drain()
    net.factory.close_all()
    net.flush()
    assert client.closed == (1001, "going away")
    assert net.backend().last.closed == (1001, "going away")
    assert fired(drained)
    net.assert_finished()
    line = net.lines()[0]
    assert line["close"] == "shutdown"


def test_close_all_answers_a_handshake_under_way_503_and_stops_the_connect() -> None:
    net = Net()
    del net.backends[SERVERS[0]]  # the connect stays pending
    client = net.client()
    drained = net.factory.drain()
    net.factory.close_all()
    net.flush()
    assert client.status.startswith("HTTP/1.1 503")
    assert net.reactor.connectors[0].stoppedConnecting
    assert fired(drained)
    net.assert_finished()
    assert net.lines()[0]["close"] == "shutdown"


def test_close_all_leaves_a_connection_already_closing_to_its_own_reason() -> None:
    net = Net()
    client = opened(net)
    backend = net.backend().last
    backend.dropConnection = lambda abort=False: None  # type: ignore[method-assign]
    client.sendClose(1000)
    net.flush()
    drained = net.factory.drain()
    net.factory.close_all()
    net.flush()
    assert not fired(drained)
    net.advance(5)  # the linger aborts what the backend keeps open
    assert fired(drained)
    assert net.lines()[0]["close"] == "client_closed"


def test_a_second_drain_fires_as_well() -> None:
    net = Net()
    opened(net)
    first, second = net.factory.drain(), net.factory.drain()
    net.factory.close_all()
    net.flush()
    assert fired(first) and fired(second)
    assert fired(net.factory.drain())


# Metrics (proxyd.metrics): connections, message bytes and errors by server.


def ws_metrics(net: Net, server: str) -> Any:
    return net.factory.stats.snapshot()["websocket"]["chat"][""]["chat"][server]


def test_a_relayed_websocket_counts_its_server_handshake_time_and_message_bytes() -> None:
    net = Net()
    client = opened(net)
    client.sendMessage(b"hello")
    net.flush()
    net.backend().last.sendMessage(b"hi there")
    net.flush()
    found = ws_metrics(net, "10.0.0.1:9001")
    assert found["connections"] == 1
    assert (found["bytes_in"], found["bytes_out"]) == (5, 5 + 8)  # the backend echoes
    assert found["connect_duration"]["count"] == 1
    wire(net.backend().last).loseConnection()
    net.flush()
    assert ws_metrics(net, "10.0.0.1:9001")["errors"] == {"server_dropped": 1}


def test_refused_attempts_count_on_their_servers_and_nothing_more_at_the_502() -> None:
    net = Net(retries=1)
    net.backends[SERVERS[0]] = "refuse"
    net.backends[SERVERS[1]] = BackendFactory(net.reactor, deny=404)
    client = net.client()
    assert client.status.startswith("HTTP/1.1 502")
    assert ws_metrics(net, "10.0.0.1:9001") == {"errors": {"connect_failed": 1}}
    assert ws_metrics(net, "10.0.0.2:9001") == {"errors": {"upstream_handshake_failed": 1}}
    assert "" not in net.factory.stats.snapshot()["websocket"]["chat"][""]["chat"]


def test_no_server_up_counts_on_the_pool_with_no_server() -> None:
    net = Net()
    for server in net.pool.servers:
        net.pool.set_health(server, False, "down")
    net.client()
    net.flush()
    assert ws_metrics(net, "") == {"errors": {"no_server": 1}}
