"""protocol = sip in the real proxyd: SIPp's UAC scenario through proxyd to a SIPp UAS, every
call successful; the sip check (OPTIONS) keeps the UAS up."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .harness import ProcessList, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing"),
]


def udp_ports() -> set[int]:
    """UDP ports bound on this host, read from /proc."""
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return ports


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(90)
def test_sipp_calls_through_proxyd_all_succeed(
    processes: ProcessList, tmp_path: Path, proxyd
) -> None:
    uas = free_udp_port()
    # -aa answers OPTIONS (the health check) with 200 outside of calls.
    server = processes.start(
        "sipp-uas",
        ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas), "-aa", "-nostdin"],
        cwd=tmp_path,
    )
    wait_until(lambda: uas in udp_ports() or not server.alive, 15, "sipp's UAS port")
    assert server.alive, server.tail()
    port = free_udp_port()
    relay = proxyd(
        f"[pool sip]\nservers = 127.0.0.1:{uas}\ncheck = sip\ncheck_interval = 500ms\n\n"
        f"[udp sip]\nlisten = udp:{port}:interface=127.0.0.1\npool = sip\nprotocol = sip\n"
    )
    relay.wait_for_log(r"\[udp sip\] listening")
    argv = ["sipp", "-sn", "uac", f"127.0.0.1:{port}", "-i", "127.0.0.1"]
    argv += ["-p", str(free_udp_port()), "-m", "30", "-r", "30", "-l", "30", "-d", "200"]
    argv += ["-nostdin", "-timeout", "40s", "-timeout_error", "-trace_stat"]
    client = subprocess.run(
        [*argv, "-stf", str(tmp_path / "uac.csv")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert client.returncode == 0, client.stdout[-2000:] + client.stderr[-2000:]
    header, *rows = (tmp_path / "uac.csv").read_text().splitlines()
    stats = dict(zip(header.split(";"), rows[-1].split(";"), strict=False))
    assert stats["SuccessfulCall(C)"] == "30" and stats["FailedCall(C)"] == "0"
    assert f"127.0.0.1:{uas} in pool sip is DOWN" not in relay.log()
