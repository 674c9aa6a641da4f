"""`check = grpc [SERVICE]`: one call of gRPC's standard health service
(grpc.health.v1.Health/Check, grpc/doc/health-checking.md) over HTTP/2, in cleartext (h2c)
or, on a pool with `tls = on`, over TLS with ALPN h2. The server is up when the call ends
with grpc-status 0 and its HealthCheckResponse says SERVING.

The two messages have one field each, encoded here by hand (protobuf's wire format:
HealthCheckRequest {string service = 1}, HealthCheckResponse {ServingStatus status = 1}).
"""

from __future__ import annotations

from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.config.model import Address, GrpcCheck
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
)
from proxyd.tls import ClientTls, describe_failure

PATH: Final = b"/grpc.health.v1.Health/Check"
SERVING: Final = 1
STATUS_NAMES: Final = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
MAX_MESSAGE: Final = 64 * 1024


def encode_request(service: str) -> bytes:
    """A HealthCheckRequest for `service`, as a gRPC message (uncompressed, length-prefixed)."""
    name = service.encode()
    body = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(body).to_bytes(4, "big") + body


def decode_status(message: bytes) -> int | None:
    """The status of a length-prefixed HealthCheckResponse (0 when the field is absent), or
    None when it is not one (compressed, truncated, malformed)."""
    if len(message) < 5 or message[0] != 0:
        return None
    length = int.from_bytes(message[1:5], "big")
    body = message[5 : 5 + length]
    if len(body) != length:
        return None
    status = 0
    i = 0
    while i < len(body):
        key, i = _read_varint(body, i)
        if key is None:
            return None
        wire = key & 7
        if wire == 0:
            value, i = _read_varint(body, i)
            if value is None:
                return None
            if key >> 3 == 1:
                status = value
        elif wire == 2:
            size, i = _read_varint(body, i)
            if size is None:
                return None
            i += size
        else:
            return None
    return status if i == len(body) else None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int | None, int]:
    value = shift = 0
    while i < len(data) and shift < 64:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return None, i


@implementer(IHandshakeListener)
class GrpcCheckProtocol(CheckProtocol):
    """The health call on stream 1; passes on SERVING with grpc-status 0."""

    def __init__(self, check: GrpcCheck, authority: bytes, tls: bool) -> None:
        self.check = check
        self.authority = authority
        self.tls = tls
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.message = b""
        self.status: bytes | None = None
        self.waiting_for = "the TLS handshake" if tls else "the response headers"

    def connectionMade(self) -> None:
        h2 = self.h2
        h2.initiate_connection()
        h2.send_headers(
            1,
            [
                (b":method", b"POST"),
                (b":scheme", b"https" if self.tls else b"http"),
                (b":authority", self.authority),
                (b":path", PATH),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        h2.send_data(1, encode_request(self.check.service), end_stream=True)
        self.connection.write(h2.data_to_send())

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "negotiatedProtocol", None) != b"h2":
            self.fail("the server did not choose h2 in ALPN")
            return
        self.waiting_for = "the response headers"

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self.fail(f"HTTP/2 protocol error: {e}")
            return
        for event in events:
            self._event(event)
            if self.finished:
                return
        pending = self.h2.data_to_send()
        if pending:
            self.connection.write(pending)

    def _event(self, event: Any) -> None:
        if isinstance(event, ResponseReceived | TrailersReceived):
            fields = dict(event.headers)
            status = fields.get(b":status")
            if status is not None and status != b"200":
                self.fail(f"HTTP status {status.decode()}")
                return
            self.waiting_for = "the response"
            if b"grpc-status" in fields:
                self.status = fields[b"grpc-status"]
                self.detail = fields.get(b"grpc-message", b"").decode("utf-8", "replace")
        elif isinstance(event, DataReceived):
            self.message += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if len(self.message) > MAX_MESSAGE:
                self.fail(f"a response over {MAX_MESSAGE} bytes")
        elif isinstance(event, StreamEnded):
            self._decide()
        elif isinstance(event, StreamReset):
            self.fail(f"stream reset (error code {event.error_code})")
        elif isinstance(event, ConnectionTerminated):
            self.fail(f"GOAWAY (error code {event.error_code})")

    detail = ""

    def _decide(self) -> None:
        if self.status is None:
            self.fail("no grpc-status in the response")
            return
        if self.status != b"0":
            detail = f": {self.detail}" if self.detail else ""
            self.fail(f"grpc-status {self.status.decode()}{detail}")
            return
        status = decode_status(self.message)
        if status is None:
            self.fail("a malformed HealthCheckResponse")
        elif status != SERVING:
            self.fail(f"health status {STATUS_NAMES.get(status, str(status))}")
        else:
            self.succeed()

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        why = describe_failure(reason)
        if why is not None:
            return CheckFailed(f"TLS error: {why}")
        return super().closed_result(reason)


@register(GrpcCheck)
def check_grpc(
    reactor: CheckReactor, address: Address, check: GrpcCheck, timeout: float
) -> Deferred[None]:
    authority = str(address).encode()
    config = check.tls
    if config is None:
        return connect_and_check(
            reactor, address, timeout, lambda: GrpcCheckProtocol(check, authority, False)
        )
    tls = ClientTls("health check", config, [b"h2"])
    clock: IReactorTime = reactor  # type: ignore[assignment]

    def wrap(factory: ClientFactory) -> Any:
        return tls.wrap(factory, address.host, clock)

    return connect_and_check(
        reactor, address, timeout, lambda: GrpcCheckProtocol(check, authority, True), wrap
    )
