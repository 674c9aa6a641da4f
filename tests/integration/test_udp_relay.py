"""The `[udp]` relay of the real proxyd, IPv4 and IPv6, in front of examples/udp_echo.py:
sessions answered from the listener's address, a server that is down refusing datagrams and
the session moving on, the access log."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from .harness import ProcessList, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def echo_servers(processes: ProcessList, host: str, ports: list[int]) -> None:
    argv = [sys.executable, str(ROOT / "examples" / "udp_echo.py"), "--interface", host]
    process = processes.start("udp-echo", [*argv, *map(str, ports)])
    process.wait_for_output(f"Echo starting on {ports[-1]}", 15)


def ask(host: str, port: int, payload: bytes, client: socket.socket | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = client or socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.sendto(payload, (host, port))
    data, source = sock.recvfrom(65535)
    assert source[:2] == (host, port)  # the answer comes from the listener's address
    return data


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_datagrams_are_relayed_and_answered_from_the_listener(
    processes: ProcessList, proxyd, host: str
) -> None:
    up = free_udp_port(host)
    echo_servers(processes, host, [up])
    port = free_udp_port(host)
    server = f"[{host}]:{up}" if ":" in host else f"{host}:{up}"
    relay = proxyd(
        f"[pool echo]\nservers = {server}\n\n"
        f"[udp echo]\nlisten = udp:{port}:interface={host}\npool = echo\nsession_timeout = 1s\n"
    )
    relay.wait_for_log(r"\[udp echo\] listening")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        assert ask(host, port, b"hello", client) == b"%d: hello" % up
        big = bytes(range(256)) * 200  # 51200 bytes: beyond Twisted's default 8192
        assert ask(host, port, big, client) == b"%d: " % up + big
    [record] = wait_until(lambda: relay.access_records(), 10, "the session's log line")
    assert record["datagrams_in"] == 2 and record["datagrams_out"] == 2
    assert record["close"] == "idle_timeout"


def test_a_server_that_refuses_moves_the_session_and_the_datagram(
    processes: ProcessList, proxyd
) -> None:
    alive = free_udp_port("127.0.0.1")
    dead = free_udp_port("127.0.0.1")  # nothing listens: the kernel answers ICMP unreachable
    echo_servers(processes, "127.0.0.1", [alive])
    port = free_udp_port("127.0.0.1")
    relay = proxyd(
        f"[pool echo]\nservers = 127.0.0.1:{dead} 127.0.0.1:{alive}\nbalance = first\n\n"
        f"[udp echo]\nlisten = udp:{port}:interface=127.0.0.1\npool = echo\n"
    )
    relay.wait_for_log(r"\[udp echo\] listening")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"first", ("127.0.0.1", port))
        client.settimeout(3)
        data, _ = client.recvfrom(65535)
    assert data == b"%d: first" % alive
    relay.wait_for_log(rf"127\.0\.0\.1:{dead} refused datagrams")
