"""WebSocket over HTTP/2 (RFC 8441) through the real proxyd: a scripted `h2` client opens an
extended CONNECT stream, over h2c with prior knowledge and over TLS with ALPN h2, and speaks
WebSocket on it to examples/ws_echo.py (autobahn, HTTP/1.1), which checks the handshake proxyd
makes and echoes every message."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset

from tests.certs import TestCA

from .harness import Backend, ProcessList, Proxyd, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final frame, masked as a client's must be (RFC 6455 5.2, 5.3)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frame(data: bytes) -> tuple[int, bytes, int] | None:
    """The first whole (unmasked) frame of `data`: opcode, payload, its length on the wire."""
    if len(data) < 2:
        return None
    size, offset = data[1] & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return None
        size, offset = struct.unpack("!H", data[2:4])[0], 4
    elif size == 127:
        if len(data) < 10:
            return None
        size, offset = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < offset + size:
        return None
    return data[0] & 0x0F, data[offset : offset + size], offset + size


class WebSocketStream:
    """An HTTP/2 connection on `sock` with one WebSocket on an extended CONNECT stream."""

    def __init__(self, sock: socket.socket, scheme: bytes) -> None:
        self.sock = sock
        self.scheme = scheme
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.events: list[Any] = []
        self.received = b""
        self.stream = 0
        self._send()
        self._read_until(lambda: self.h2.remote_settings.enable_connect_protocol == 1)

    def _send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read_until(self, done: Callable[[], bool]) -> None:
        while not done():
            data = self.sock.recv(65536)
            assert data, "proxyd closed the connection"
            for event in self.h2.receive_data(data):
                self.events.append(event)
                if isinstance(event, DataReceived) and event.stream_id == self.stream:
                    self.received += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, self.stream)
            self._send()

    def _of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.stream_id == self.stream]

    def open(self, path: bytes, protocol: bytes = b"websocket") -> dict[bytes, bytes]:
        """The extended CONNECT (RFC 8441 4); its response's fields."""
        self.stream = self.h2.get_next_available_stream_id()
        self.received = b""
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", protocol),
            (b":scheme", self.scheme),
            (b":path", path),
            (b":authority", b"ws.test"),
            (b"sec-websocket-version", b"13"),
            (b"origin", b"http://ws.test"),
        ]
        self.h2.send_headers(self.stream, headers)
        self._send()
        self._read_until(lambda: bool(self._of(ResponseReceived)))
        return dict(self._of(ResponseReceived)[0].headers)

    def send(self, opcode: int, payload: bytes) -> None:
        """A message as one frame, sent as the stream's windows allow."""
        data = client_frame(opcode, payload)
        while data:
            window = min(
                self.h2.local_flow_control_window(self.stream), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self._read_until(lambda: self.h2.local_flow_control_window(self.stream) > 0)
                continue
            self.h2.send_data(self.stream, data[:window])
            data = data[window:]
            self._send()

    def receive(self) -> tuple[int, bytes]:
        self._read_until(lambda: server_frame(self.received) is not None)
        frame = server_frame(self.received)
        assert frame is not None
        opcode, payload, length = frame
        self.received = self.received[length:]
        return opcode, payload

    def wait_end(self) -> None:
        self._read_until(lambda: bool(self._of(StreamEnded) or self._of(StreamReset)))
        assert self._of(StreamEnded), self.events


@pytest.fixture
def echo_server(processes: ProcessList) -> Backend:
    argv = [sys.executable, str(ROOT / "examples" / "ws_echo.py"), "--port", "0"]
    process = processes.start("ws-echo", argv)
    match = process.wait_for_output(r"listening on 127\.0\.0\.1:(\d+)", 15)
    return Backend(process, int(match.group(1)))


@pytest.fixture
def relay(
    proxyd: Callable[..., Proxyd], echo_server: Backend, tmp_path: Path
) -> tuple[Proxyd, int, int, Path]:
    ca = TestCA()
    pem = ca.issue(["ws.test"]).write(tmp_path / "ws.pem")
    http_port, https_port = free_port(), free_port()
    server = proxyd(
        f"[pool ws]\nservers = {echo_server.address}\n\n"
        f"[http plain]\nlisten = tcp:{http_port}:interface=127.0.0.1\nh2c = on\n"
        "routes = path / -> pool ws\n\n"
        f"[https secure]\nlisten = tcp:{https_port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "routes = path / -> pool ws\n"
    )
    return server, http_port, https_port, ca.write_ca(tmp_path / "ca.pem")


def converse(ws: WebSocketStream) -> int:
    """Open a WebSocket, echo a text and a large binary message, close it; the bytes the
    client sent after the handshake."""
    answer = ws.open(b"/echo?room=1")
    assert answer[b":status"] == b"200", answer
    assert b"sec-websocket-accept" not in answer
    ws.send(TEXT, b"hello over HTTP/2")
    assert ws.receive() == (TEXT, b"hello over HTTP/2")
    payload = os.urandom(300_000)  # more than either side's stream window
    ws.send(BINARY, payload)
    assert ws.receive() == (BINARY, payload)
    ws.send(CLOSE, struct.pack("!H", 1000))
    opcode, reason = ws.receive()
    assert opcode == CLOSE and reason[:2] == struct.pack("!H", 1000)
    ws.wait_end()  # the server closed its connection: the stream ends
    return len(client_frame(TEXT, b"hello over HTTP/2")) + len(client_frame(BINARY, payload)) + 8


def test_websocket_over_h2c_prior_knowledge(relay: tuple[Proxyd, int, int, Path]) -> None:
    server, http_port, _, _ = relay
    sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    ws = WebSocketStream(sock, b"http")
    sent = converse(ws)
    other = ws.open(b"/", b"connect-udp")
    assert other[b":status"] == b"501"
    sock.close()
    record, refused = server.wait_access_records(2)
    assert record["protocol"] == "HTTP/2" and record["stream"] == 1
    assert record["method"] == "GET" and record["uri"] == "/echo?room=1"
    assert record["status"] == 200 and record["upstream_status"] == 101
    assert record["upgrade"] == "websocket" and record["close"] == "server_closed"
    assert record["bytes_in"] == sent
    assert refused["status"] == 501 and refused["stream"] == 3


def test_websocket_over_tls_with_alpn_h2(relay: tuple[Proxyd, int, int, Path]) -> None:
    server, _, https_port, ca_file = relay
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", https_port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="ws.test")
    assert sock.selected_alpn_protocol() == "h2"
    converse(WebSocketStream(sock, b"https"))
    sock.close()
    (record,) = server.wait_access_records(1)
    assert record["protocol"] == "HTTP/2" and record["tls_version"] == "TLSv1.3"
    assert record["status"] == 200 and record["upgrade"] == "websocket"
