"""`[gslb NAME]` in the real proxyd, in front of TCP backends on 127.0.0.2-4 with `tcp`
checks, queried with dig and dnspython over UDP and TCP: a stopped backend leaves the
answers within a check interval and comes back when it returns; NXDOMAIN, REFUSED, EDNS
Client Subnet, the queries in /metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from .harness import Backend, ProcessList, Proxyd, free_port, start_backend, wait_until
from .test_dns_relay import free_udp_and_tcp_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig missing (bind9-dnsutils)"),
]

CHECK_INTERVAL = 1.0


def dig(port: int, *args: str) -> str:
    argv = ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=2", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def addresses(port: int, name: str = "www.demo.test", tcp: bool = False) -> set[str]:
    query = dns.message.make_query(name, "A")
    ask = dns.query.tcp if tcp else dns.query.udp
    answer = ask(query, "127.0.0.1", port=port, timeout=5)
    assert answer.id == query.id and answer.flags & dns.flags.AA
    return {rdata.address for rrset in answer.answer for rdata in rrset}


def start(
    processes: ProcessList, proxyd: Callable[..., Proxyd]
) -> tuple[Proxyd, int, int, dict[str, Backend]]:
    backends = {
        host: start_backend(processes, "echo", "--host", host, name=host)
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    }
    web = " ".join(f"{host}:{b.port}" for host, b in backends.items() if host != "127.0.0.4")
    eu = f"127.0.0.4:{backends['127.0.0.4'].port}"
    port, admin = free_udp_and_tcp_port(), free_port()
    relay = proxyd(
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        f"[pool web]\nservers = {web}\ncheck = tcp\ncheck_interval = {CHECK_INTERVAL}s\n"
        "rise = 1\nfall = 1\n\n"
        f"[pool eu]\nservers = {eu}\ncheck = tcp\n\n"
        f"[gslb demo]\nlisten = udp:{port}:interface=127.0.0.1\nzone = demo.test\n"
        "records =\n    www -> pool web\n    www -> pool eu from 10.0.0.0/8\nttl = 5s\n"
    )
    relay.wait_for_log(r"\[gslb demo/tcp\] listening")
    relay.wait_for_log(r"\[gslb demo\] listening")
    return relay, port, admin, backends


def test_a_stopped_server_leaves_the_answers_within_a_check_interval_and_returns(
    processes: ProcessList, proxyd: Callable[..., Proxyd]
) -> None:
    relay, port, _, backends = start(processes, proxyd)
    assert addresses(port) == {"127.0.0.2", "127.0.0.3"}
    assert set(dig(port, "www.demo.test", "A", "+short").split()) == {"127.0.0.2", "127.0.0.3"}
    stopped = backends["127.0.0.3"]
    stopped.kill()
    killed = time.monotonic()
    wait_until(lambda: addresses(port) == {"127.0.0.2"}, 10, "127.0.0.3 out of the answers")
    # One interval (+10% jitter) until the next check, which fails at once (refused).
    assert time.monotonic() - killed < CHECK_INTERVAL * 1.1 + 0.5
    relay.wait_for_state(f"127.0.0.3:{stopped.port}", "web", "DOWN", timeout=1)
    assert addresses(port, tcp=True) == {"127.0.0.2"}

    start_backend(processes, "echo", "--host", "127.0.0.3", "--port", str(stopped.port))
    wait_until(
        lambda: addresses(port) == {"127.0.0.2", "127.0.0.3"}, 10, "127.0.0.3 back in answers"
    )


def test_rcodes_tcp_client_subnet_and_metrics(
    processes: ProcessList, proxyd: Callable[..., Proxyd]
) -> None:
    _, port, admin, _ = start(processes, proxyd)
    answer = dig(port, "WWW.Demo.Test", "A")
    assert "status: NOERROR" in answer and re.search(r"flags: qr aa rd;", answer)
    assert re.search(r"^WWW\.Demo\.Test\.\s+5\s+IN\s+A\s+127\.0\.0\.[23]$", answer, re.M)
    nxdomain = dig(port, "nope.demo.test", "A")
    assert "status: NXDOMAIN" in nxdomain
    assert re.search(r"^demo\.test\.\s+5\s+IN\s+SOA\s+ns\.demo\.test\. ", nxdomain, re.M)
    nodata = dig(port, "www.demo.test", "MX")
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata and "AUTHORITY: 1" in nodata
    refused = dig(port, "www.example.test", "A")
    assert "status: REFUSED" in refused
    soa = dig(port, "demo.test", "SOA", "+tcp", "+short")
    assert soa.startswith("ns.demo.test. hostmaster.demo.test. ")
    assert set(dig(port, "www.demo.test", "+tcp", "+short").split()) == {
        "127.0.0.2",
        "127.0.0.3",
    }
    ecs = dig(port, "www.demo.test", "A", "+subnet=10.1.2.0/24")
    assert "CLIENT-SUBNET: 10.1.2.0/24/24" in ecs
    assert re.search(r"IN\s+A\s+127\.0\.0\.4$", ecs, re.M)
    query = dns.message.make_query("www.demo.test", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    assert dns.query.udp(query, "127.0.0.1", port=port, timeout=5).rcode() == dns.rcode.NOTIMP
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    found = dict(
        re.findall(r'^proxyd_gslb_queries_total\{[^}]*rcode="(\w+)"\} (\S+)$', metrics, re.M)
    )
    assert float(found["NOERROR"]) >= 4 and float(found["NXDOMAIN"]) == 1
    assert float(found["REFUSED"]) == 1 and float(found["NOTIMP"]) == 1


def test_with_workers_every_worker_answers_from_the_masters_health_checks(
    processes: ProcessList, proxyd: Callable[..., Proxyd]
) -> None:
    backends = [
        start_backend(processes, "echo", "--host", host, name=host)
        for host in ("127.0.0.2", "127.0.0.3")
    ]
    port, admin = free_udp_and_tcp_port(), free_port()
    servers = " ".join(f"127.0.0.{2 + i}:{b.port}" for i, b in enumerate(backends))
    relay = proxyd(
        "[proxyd]\nworkers = 2\n\n"
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        f"[pool web]\nservers = {servers}\ncheck = tcp\ncheck_interval = 500ms\nfall = 1\n\n"
        f"[gslb demo]\nlisten = udp:{port}:interface=127.0.0.1\nzone = demo.test\n"
        "records = www -> pool web\n"
    )
    wait_until(lambda: relay.log().count("serving") >= 2, 20, "both workers serving")
    assert all(addresses(port) == {"127.0.0.2", "127.0.0.3"} for _ in range(10))
    backends[1].kill()
    relay.wait_for_state(f"127.0.0.3:{backends[1].port}", "web", "DOWN", timeout=10)
    # Each query comes from a new source port: the kernel spreads them over both workers.
    wait_until(
        lambda: all(addresses(port) == {"127.0.0.2"} for _ in range(20)),
        5,
        "every worker without 127.0.0.3",
    )
    assert addresses(port, tcp=True) == {"127.0.0.2"}
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    (noerror,) = re.findall(
        r'^proxyd_gslb_queries_total\{[^}]*rcode="NOERROR"\} (\S+)$', metrics, re.M
    )
    assert float(noerror) >= 31  # summed over the workers


def test_a_reload_applies_a_changed_section_on_the_same_port(
    processes: ProcessList, proxyd: Callable[..., Proxyd]
) -> None:
    relay, port, admin, _ = start(processes, proxyd)
    assert addresses(port, "www.demo.test") == {"127.0.0.2", "127.0.0.3"}
    text = relay.config_path.read_text()
    relay.config_path.write_text(
        text.replace("    www -> pool web\n", "    api -> pool web\n").replace(
            "    www -> pool eu from", "    api -> pool eu from"
        )
    )
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/api/v1/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert b'"reloaded": true' in answer.read()
    assert addresses(port, "api.demo.test") == {"127.0.0.2", "127.0.0.3"}
    assert addresses(port, "api.demo.test", tcp=True) == {"127.0.0.2", "127.0.0.3"}
    gone = dns.query.udp(dns.message.make_query("www.demo.test", "A"), "127.0.0.1", port=port)
    assert gone.rcode() == dns.rcode.NXDOMAIN
