"""The grpc health check's hand-made protobuf coding and its config (proxyd.health.grpc)."""

from __future__ import annotations

import pytest

from proxyd.config.checks import check
from proxyd.config.errors import Invalid
from proxyd.config.model import GrpcCheck
from proxyd.health.grpc import decode_status, encode_request

health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")


def _framed(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("service", ["", "test.Echo", "a" * 300])
def test_request_is_what_protobuf_encodes(service: str) -> None:
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert encode_request(service) == _framed(expected)


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_response_status_is_decoded(status: int) -> None:
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert decode_status(_framed(message)) == status


def test_unknown_fields_are_skipped_and_garbage_is_refused() -> None:
    assert decode_status(_framed(b"\x12\x03abc\x08\x01")) == 1
    assert decode_status(_framed(b"\x08")) is None
    assert decode_status(b"\x01" + _framed(b"\x08\x01")[1:]) is None  # compressed
    assert decode_status(b"\x00\x00\x00\x00\x05\x08") is None  # truncated


def test_check_line() -> None:
    assert check("grpc") == GrpcCheck()
    assert check("grpc helloworld.Greeter") == GrpcCheck("helloworld.Greeter")
    with pytest.raises(Invalid):
        check("grpc a b")
