"""gRPC through the real proxyd (docs/grpc.md): a grpcio client over h2c to an [http] listener
with h2c = on, proxied to a grpcio server by a pool with protocol = h2c; unary and streaming
calls both ways, trailers end to end, and proxyd's own errors as gRPC statuses."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")

from .harness import Backend, ProcessList, free_port, wait_until  # noqa: E402
from .test_l4_access import metrics  # noqa: E402

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def start_grpc_server(processes: ProcessList, name: str, *args: str) -> Backend:
    argv = [sys.executable, str(HERE / "grpc_peer.py"), "--name", name, *args]
    process = processes.start(f"grpc-{name}", argv)
    match = process.wait_for_output(r"PORT (\d+)\n", 20)
    return Backend(process, int(match.group(1)))


@pytest.fixture
def grpc_server(processes: ProcessList) -> Callable[..., Backend]:
    return lambda name, *args: start_grpc_server(processes, name, *args)


def grpc_config(port: int, servers: list[Backend], extra: str = "") -> str:
    lines = "\n".join(f"    {s.address}" for s in servers)
    return (
        f"[pool g]\nservers =\n{lines}\nprotocol = h2c\n{extra}\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\nh2c = on\n"
        "response_timeout = 10s\n"
        "routes =\n    path / -> pool g\n"
    )


@pytest.fixture
def channel_to() -> Iterator[Callable[[int], object]]:
    channels: list[object] = []

    def open_channel(port: int) -> object:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()  # type: ignore[attr-defined]


def test_unary_and_streaming_calls_through_proxyd(grpc_server, proxyd, channel_to) -> None:
    server = grpc_server("g1")
    port = free_port()
    proxyd(grpc_config(port, [server]))
    channel = channel_to(port)
    unary = channel.unary_unary("/test.Echo/Unary")
    response, call = unary.with_call(b"hello", timeout=10)
    assert response == b"g1:hello"
    assert call.code() == grpc.StatusCode.OK
    big = b"x" * 3_000_000  # past every flow-control window, both ways
    assert unary(big, timeout=20) == b"g1:" + big
    stream = channel.unary_stream("/test.Echo/ServerStream")
    assert list(stream(b"500", timeout=10)) == [b"%d" % i for i in range(500)]
    client_stream = channel.stream_unary("/test.Echo/ClientStream")
    assert client_stream(iter([b"a", b"b" * 100_000, b"c"]), timeout=10) == (
        b"a" + b"b" * 100_000 + b"c"
    )
    bidi = channel.stream_stream("/test.Echo/Bidi")
    messages = [b"m%d" % i * 1000 for i in range(200)]
    assert list(bidi(iter(messages), timeout=20)) == messages


def test_server_errors_pass_with_their_trailers(grpc_server, proxyd, channel_to) -> None:
    server = grpc_server("g1")
    port = free_port()
    proxyd(grpc_config(port, [server]))
    fail = channel_to(port).unary_unary("/test.Echo/Fail")
    with pytest.raises(grpc.RpcError) as raised:
        fail(b"5", timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "failed on purpose"


def test_a_killed_backend_gives_unavailable(grpc_server, proxyd, channel_to) -> None:
    server = grpc_server("g1")
    port = free_port()
    proxyd(grpc_config(port, [server]))
    unary = channel_to(port).unary_unary("/test.Echo/Unary")
    assert unary(b"x", timeout=10) == b"g1:x"
    server.kill()
    with pytest.raises(grpc.RpcError) as raised:
        unary(b"x", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "proxyd: 502" in raised.value.details()


def test_a_deadline_shorter_than_the_answer_is_deadline_exceeded(
    grpc_server, proxyd, channel_to
) -> None:
    server = grpc_server("g1")
    port, admin = free_port(), free_port()
    instance = proxyd(
        grpc_config(port, [server]) + f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n"
    )
    slow = channel_to(port).unary_unary("/test.Echo/Slow")
    with pytest.raises(grpc.RpcError) as raised:
        slow(b"3", timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    records = instance.wait_access_records(1)
    assert records[0]["status"] in (200, 499, 504)
    # The call's stream was cancelled upstream; its connection stays open for others.
    labels = (("pool", "g"), ("server", server.address))

    def upstream(name: str, *extra: tuple[str, str]) -> float | None:
        return metrics(admin).get((f"proxyd_upstream_http2_{name}", tuple(sorted(labels + extra))))

    wait_until(lambda: upstream("streams_open") == 0, 10, "the stream closed in /metrics")
    assert upstream("streams_total") == 1
    assert upstream("connections_open") == 1
    assert upstream("streams_reset_total", ("reason", "cancelled")) == 1
    for reason in ("refused", "goaway", "server_reset", "connection_lost"):
        assert upstream("streams_reset_total", ("reason", reason)) == 0


def test_no_route_is_unimplemented_and_requests_spread_on_streams(
    grpc_server, proxyd, channel_to
) -> None:
    server = grpc_server("g1")
    port = free_port()
    config = grpc_config(port, [server]).replace("path / -> pool g", "path /test. -> pool g")
    proxyd(config)
    channel = channel_to(port)
    with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary("/other.Service/Call")(b"x", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    unary = channel.unary_unary("/test.Echo/Unary")
    futures = [unary.future(b"%d" % i, timeout=10) for i in range(50)]
    assert sorted(f.result() for f in futures) == sorted(b"g1:%d" % i for i in range(50))


def test_grpc_health_check_follows_the_health_service(grpc_server, proxyd, channel_to) -> None:
    first, second = grpc_server("g1"), grpc_server("g2")
    port = free_port()
    extra = "check = grpc test.Echo\ncheck_interval = 200ms\nrise = 1\nfall = 1\n"
    instance = proxyd(grpc_config(port, [first, second], extra))
    set_health = grpc.insecure_channel(f"127.0.0.1:{first.port}").unary_unary(
        "/test.Echo/SetHealth"
    )
    start = instance.log_offset()
    assert set_health(b"NOT_SERVING", timeout=10) == b"ok"
    instance.wait_for_state(first.address, "g", "DOWN", start=start)
    unary = channel_to(port).unary_unary("/test.Echo/Unary")
    assert {unary(b"x", timeout=10) for _ in range(6)} == {b"g2:x"}
    assert set_health(b"SERVING", timeout=10) == b"ok"
    instance.wait_for_state(first.address, "g", "UP", start=start)
    start = instance.log_offset()
    second.kill()
    instance.wait_for_state(second.address, "g", "DOWN", start=start)
    assert {unary(b"x", timeout=10) for _ in range(4)} == {b"g1:x"}


def test_an_h2_pool_speaks_tls_with_alpn_h2(grpc_server, proxyd, channel_to, tmp_path) -> None:
    from tests.certs import TestCA

    ca = TestCA()
    ca.write_ca(tmp_path / "ca.pem")
    issued = ca.issue(["grpc.example.test"])
    pem = issued.write(tmp_path / "server.pem")
    server = grpc_server("tls1", "--tls", str(pem), str(pem))
    port = free_port()
    extra = (
        f"tls = on\ntls_ca = {tmp_path / 'ca.pem'}\ntls_server_name = grpc.example.test\n"
        "check = grpc\ncheck_interval = 200ms\n"
    )
    config = grpc_config(port, [server], extra).replace("protocol = h2c", "protocol = h2")
    proxyd(config)
    unary = channel_to(port).unary_unary("/test.Echo/Unary")
    assert unary(b"over tls", timeout=10) == b"tls1:over tls"
    bidi = channel_to(port).stream_stream("/test.Echo/Bidi")
    assert list(bidi(iter([b"a", b"b"]), timeout=10)) == [b"a", b"b"]
