"""`access` and the per-client limits of the real proxyd's `[tcp]` and `[udp]` listeners, with
clients on two loopback addresses (127.0.0.1 and 127.0.0.2, both routed by `lo`): a denied
client is closed at accept (a FIN, no byte) or its datagrams dropped, an allowed one is relayed,
a third connection from one address is refused and a fourth gets in once one closes; each
refusal in the access log and /metrics (and the first in the log: the others within a second
of it are only counted there, for the next line)."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import ProcessList, free_port, recv_line, tcp_config, wait_until
from .test_udp_relay import echo_servers, free_udp_port

pytestmark = pytest.mark.integration

DENIED = "127.0.0.2"


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_without_a_byte(sock: socket.socket) -> bool:
    """The connection ends with a FIN and nothing before it (a reset would raise)."""
    return sock.recv(1) == b""


def echoes(sock: socket.socket) -> bool:
    sock.sendall(b"ping\n")
    return recv_line(sock) == b"ping\n"


def metrics(admin: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def counted(admin: int, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (found, sample_labels), value in metrics(admin).items()
        if found == name and set(labels.items()) <= set(sample_labels)
    )


def records_closed(relay: Any, close: str) -> list[dict[str, Any]]:
    return [r for r in relay.access_records() if r["close"] == close]


@pytest.mark.timeout(60)
def test_tcp_access_and_max_connections_per_client(backend, proxyd) -> None:
    echo = backend("echo")
    port, admin = free_port(), free_port()
    options = "access =\n    deny 127.0.0.2\n    allow all\nmax_connections_per_client = 2\n"
    relay = proxyd(
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        + tcp_config(port, [echo.address], listener_options=options)
    )

    with connect_from(DENIED, port) as denied:
        assert closed_without_a_byte(denied)
    relay.wait_for_log(r"tcp relay: 127\.0\.0\.2 refused: access denied")
    (record,) = wait_until(lambda: records_closed(relay, "access_denied"), 10, "the refusal")
    assert record["client"].startswith("127.0.0.2:") and record["backend"] is None

    first, second = connect_from("127.0.0.1", port), connect_from("127.0.0.1", port)
    try:
        assert echoes(first) and echoes(second)
        with connect_from("127.0.0.1", port) as third:
            assert closed_without_a_byte(third)
        wait_until(lambda: records_closed(relay, "client_limit"), 10, "the third's refusal")
        first.close()
        wait_until(lambda: records_closed(relay, "client_closed"), 10, "the first's end")
        with connect_from("127.0.0.1", port) as fourth:
            assert echoes(fourth)
        assert echoes(second)
    finally:
        first.close()
        second.close()

    def refusals() -> tuple[float, float]:
        return (
            counted(admin, "proxyd_errors_total", listener="relay", error="access_denied"),
            counted(admin, "proxyd_errors_total", listener="relay", error="client_limit"),
        )

    assert wait_until(lambda: refusals() == (1.0, 1.0), 10, "the refusals in /metrics")


@pytest.mark.timeout(60)
def test_udp_datagrams_from_a_denied_source_are_dropped_and_counted(
    processes: ProcessList, proxyd
) -> None:
    up = free_udp_port("127.0.0.1")
    echo_servers(processes, "127.0.0.1", [up])
    port, admin = free_udp_port("127.0.0.1"), free_port()
    relay = proxyd(
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        f"[pool echo]\nservers = 127.0.0.1:{up}\n\n"
        f"[udp echo]\nlisten = udp:{port}:interface=127.0.0.1\npool = echo\n"
        "access = deny 127.0.0.2\n"
    )
    relay.wait_for_log(r"\[udp echo\] listening")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as denied,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as allowed,
    ):
        denied.bind((DENIED, 0))
        denied.sendto(b"let me in", ("127.0.0.1", port))
        relay.wait_for_log(r"udp echo: 127\.0\.0\.2 refused: access denied")
        allowed.settimeout(5)
        allowed.sendto(b"hello", ("127.0.0.1", port))
        assert allowed.recvfrom(65535)[0] == b"%d: hello" % up
        denied.setblocking(False)
        with pytest.raises(BlockingIOError):
            denied.recvfrom(65535)  # the refusal was logged: nothing was sent, nor will be

    def dropped() -> float:
        return counted(admin, "proxyd_udp_dropped_total", listener="echo", reason="access_denied")

    assert wait_until(lambda: dropped() == 1.0, 10, "the drop in /metrics")
