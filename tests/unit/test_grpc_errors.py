"""gRPC calls as proxyd sees them (proxyd.relay.http.grpc): recognised, their deadline read,
proxyd's own errors turned into Trailers-Only answers with the gRPC code clients expect."""

from __future__ import annotations

import pytest

from proxyd.filters.api import Reject
from proxyd.relay.http import grpc
from proxyd.relay.http.messages import Request


def _request(*fields: tuple[bytes, bytes]) -> Request:
    return Request(b"POST", b"/pkg.Service/Method", "2", list(fields))


def test_grpc_is_told_by_its_content_type_not_grpc_web() -> None:
    assert grpc.is_grpc(_request((b"content-type", b"application/grpc")))
    assert grpc.is_grpc(_request((b"Content-Type", b"application/grpc+proto")))
    assert not grpc.is_grpc(_request((b"content-type", b"application/grpc-web")))
    assert not grpc.is_grpc(_request((b"content-type", b"application/json")))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1S", 1.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0), (b"100u", 1e-4)],
)
def test_grpc_timeout_is_read(value: bytes, seconds: float) -> None:
    assert grpc.deadline(_request((b"grpc-timeout", value))) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"123456789S", b"10x", b"-1S"])
def test_malformed_grpc_timeout_is_ignored(value: bytes) -> None:
    assert grpc.deadline(_request((b"grpc-timeout", value))) is None


def test_the_response_timeout_is_no_longer_than_the_deadline() -> None:
    assert grpc.response_timeout(_request((b"grpc-timeout", b"500m")), 60.0) == 0.5
    assert grpc.response_timeout(_request((b"grpc-timeout", b"2M")), 60.0) == 60.0
    assert grpc.response_timeout(_request(), 60.0) == 60.0


@pytest.mark.parametrize(
    ("status", "bound", "code"),
    [
        (401, False, 16),
        (403, False, 7),
        (404, False, 12),
        (429, False, 14),
        (413, False, 8),
        (502, False, 14),
        (503, False, 14),
        (504, False, 14),
        (504, True, 4),
        (500, False, 13),
        (418, False, 2),
    ],
)
def test_errors_become_trailers_only_answers(status: int, bound: bool, code: int) -> None:
    answer = grpc.error_answer(Reject(status, "why", "refused"), bound)
    assert answer.status == 200
    assert answer.body == b""
    fields = dict(answer.headers)
    assert fields[b"content-type"] == b"application/grpc"
    assert fields[b"grpc-status"] == b"%d" % code
    assert fields[b"grpc-message"].startswith(b"proxyd: %d" % status)


def test_grpc_message_is_percent_encoded() -> None:
    assert grpc.percent_encode("100% é".encode()) == b"100%25 %C3%A9"
