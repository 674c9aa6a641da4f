"""protocol = dns in the real proxyd, against two dnsmasq servers, queried with dnspython:
answers with the client's IDs, a stopped server's queries answered by the other."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path

import dns.message
import dns.query
import pytest

from .harness import ProcessList, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("dnsmasq", path="/usr/sbin:/usr/bin") is None, reason="dnsmasq missing"
    ),
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_and_tcp_port() -> int:
    """A port free for UDP and for TCP on 127.0.0.1 a moment ago: dnsmasq listens on both.
    (A port free for UDP alone may be a TCP connection's local port of the moment, in the
    same ephemeral range, and dnsmasq then fails with "Address already in use".)"""
    for _ in range(100):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both UDP and TCP in 100 tries")


def dnsmasq(processes: ProcessList, tmp_path: Path, name: str, answer: str) -> tuple[int, object]:
    config = tmp_path / f"{name}.conf"
    config.write_text(
        "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\n"
        f"address=/example.test/{answer}\n"
    )
    tries = 3  # the port may be taken between its choice and dnsmasq's bind
    while True:
        tries -= 1
        port = free_udp_and_tcp_port()
        argv = [shutil.which("dnsmasq", path="/usr/sbin:/usr/bin"), "-k", "-C", str(config)]
        argv += ["-p", str(port), "--pid-file=", "--log-facility=-", "--user=" + _user()]
        process = processes.start(f"dnsmasq-{name}", argv)
        try:
            process.wait_for_output(r"started, version", 15)
        except AssertionError:
            if not tries or "Address already in use" not in process.output():
                raise
            continue
        return port, process


def _user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def ask(port: int, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
    assert answer.id == query.id
    return answer


def test_queries_are_answered_through_proxyd_and_survive_a_stopped_server(
    processes: ProcessList, tmp_path: Path, proxyd
) -> None:
    first, first_process = dnsmasq(processes, tmp_path, "one", "192.0.2.1")
    second, _ = dnsmasq(processes, tmp_path, "two", "192.0.2.2")
    port = free_udp_port()
    relay = proxyd(
        f"[pool dns]\nservers = 127.0.0.1:{first} 127.0.0.1:{second}\nbalance = round_robin\n\n"
        f"[udp dns]\nlisten = udp:{port}:interface=127.0.0.1\npool = dns\nprotocol = dns\n"
        "query_timeout = 500ms\n"
    )
    relay.wait_for_log(r"\[udp dns\] listening")
    seen = {str(ask(port, f"n{i}.example.test").answer[0][0]) for i in range(10)}
    assert seen == {"192.0.2.1", "192.0.2.2"}  # round robin over both

    first_process.kill()  # type: ignore[attr-defined]
    for i in range(20):
        assert str(ask(port, f"m{i}.example.test").answer[0][0]) == "192.0.2.2"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"not dns", ("127.0.0.1", port))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recvfrom(512)


def test_the_dns_check_takes_a_stopped_server_down_and_no_query_fails_after(
    processes: ProcessList, tmp_path: Path, proxyd
) -> None:
    first, first_process = dnsmasq(processes, tmp_path, "one", "192.0.2.1")
    second, _ = dnsmasq(processes, tmp_path, "two", "192.0.2.2")
    port = free_udp_port()
    relay = proxyd(
        f"[pool dns]\nservers = 127.0.0.1:{first} 127.0.0.1:{second}\n"
        "check = dns example.test A\ncheck_interval = 200ms\nfall = 2\nbalance = round_robin\n\n"
        f"[udp dns]\nlisten = udp:{port}:interface=127.0.0.1\npool = dns\nprotocol = dns\n"
        "retries = 0\n"
    )
    relay.wait_for_log(r"\[udp dns\] listening")
    first_process.kill()  # type: ignore[attr-defined]
    relay.wait_for_state(f"127.0.0.1:{first}", "dns", "DOWN", timeout=10)
    # With no retries, only the health state keeps queries off the stopped server.
    answers = {str(ask(port, f"q{i}.example.test").answer[0][0]) for i in range(30)}
    assert answers == {"192.0.2.2"}


def test_dns_over_tcp_goes_through_a_tcp_listener_on_the_same_pool(
    processes: ProcessList, tmp_path: Path, proxyd
) -> None:
    server, _ = dnsmasq(processes, tmp_path, "one", "192.0.2.1")
    udp_port, tcp_port = free_udp_port(), free_port()
    proxyd(
        f"[pool dns]\nservers = 127.0.0.1:{server}\n\n"
        f"[udp dns]\nlisten = udp:{udp_port}:interface=127.0.0.1\npool = dns\nprotocol = dns\n\n"
        f"[tcp dns-tcp]\nlisten = tcp:{tcp_port}:interface=127.0.0.1\npool = dns\n"
    )
    query = dns.message.make_query("t.example.test", "A")
    answer = dns.query.tcp(query, "127.0.0.1", port=tcp_port, timeout=5)
    assert answer.id == query.id and str(answer.answer[0][0]) == "192.0.2.1"
