"""OCSP stapling in the real proxyd, against a real `openssl ocsp` responder on loopback: a
good certificate is stapled on [https] and TLS [tcp] listeners once fetched, a revoked one
is not, and a responder that is down leaves handshakes working without a staple, logged once.
`openssl s_client -status` is the client."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import Issued, TestCA, key_pem

from .harness import Process, ProcessList, free_port, wait_until

pytestmark = pytest.mark.integration

NAME = "ocsp.proxyd.test"


def s_client_status(port: int) -> str:
    """What `openssl s_client -status` prints of a handshake with proxyd."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME, "-status"],
        input=b"",
        capture_output=True,
        timeout=15,
        check=False,
    )
    return done.stdout.decode("utf-8", "replace")


def stapled(port: int) -> str | None:
    """s_client's output once it shows a stapled response, else None."""
    output = s_client_status(port)
    return output if "OCSP Response Status: successful" in output else None


@pytest.fixture
def ocsp_responder(
    tmp_path: Path, processes: ProcessList, ca: TestCA
) -> Callable[[int, list[tuple[Issued, bool]]], None]:
    """`ocsp_responder(port, [(issued, revoked), ...])`: an `openssl ocsp` responder for
    `ca` on `port`, its index.txt listing those certificates (R for revoked, else V).
    Responses are signed by the CA and say nextUpdate in a day."""

    def start(port: int, listed: list[tuple[Issued, bool]]) -> None:
        directory = tmp_path / "responder"
        directory.mkdir()
        ca.write_ca(directory / "ca.pem")
        (directory / "ca.key").write_bytes(key_pem(ca.key))
        lines = [ca.index_line(issued, revoked) for issued, revoked in listed]
        (directory / "index.txt").write_text("".join(line + "\n" for line in lines))
        argv = ["openssl", "ocsp", "-index", "index.txt", "-port", str(port)]
        argv += ["-rsigner", "ca.pem", "-rkey", "ca.key", "-CA", "ca.pem", "-ndays", "1"]
        process: Process = processes.start("openssl-ocsp", argv, cwd=directory)
        process.wait_listening([port], 15)

    return start


def site(ca: TestCA, tmp_path: Path, responder_port: int, name: str = "site") -> Issued:
    """A certificate naming the responder, written with its issuer after it (as
    fullchain.pem) and its key as certs/NAME.pem."""
    issued = ca.issue([NAME], ocsp_url=f"http://127.0.0.1:{responder_port}/")
    issued.chain = (ca.cert,)
    directory = tmp_path / "certs"
    directory.mkdir(exist_ok=True)
    issued.write(directory / f"{name}.pem")
    return issued


def listeners(https_port: int, tcp_port: int, backend_port: int, pem: Path) -> str:
    return (
        f"[pool web]\nservers = 127.0.0.1:{backend_port}\n\n"
        f"[https front]\nlisten = tcp:{https_port}:interface=127.0.0.1\n"
        f"certificates = {pem}\nroutes =\n    path / -> pool web\n\n"
        f"[tcp front-tls]\nlisten = tcp:{tcp_port}:interface=127.0.0.1\n"
        f"certificates = {pem}\npool = web\n"
    )


def test_a_good_certificate_is_stapled_on_https_and_tls_tcp_listeners(
    tmp_path, ca, ocsp_responder, http_backend, proxyd
) -> None:
    responder_port = free_port()
    issued = site(ca, tmp_path, responder_port)
    ocsp_responder(responder_port, [(issued, False)])
    https_port, tcp_port = free_port(), free_port()
    pem = tmp_path / "certs" / "site.pem"
    proxyd(listeners(https_port, tcp_port, http_backend.port, pem))
    for port in (https_port, tcp_port):
        output = wait_until(lambda p=port: stapled(p), 20, f"a staple on port {port}")
        assert "Cert Status: good" in output


def test_a_revoked_certificate_is_not_stapled(
    tmp_path, ca, ocsp_responder, http_backend, proxyd
) -> None:
    responder_port = free_port()
    issued = site(ca, tmp_path, responder_port)
    ocsp_responder(responder_port, [(issued, True)])
    https_port, tcp_port = free_port(), free_port()
    relay = proxyd(listeners(https_port, tcp_port, http_backend.port, tmp_path / "certs/site.pem"))
    relay.wait_for_log(r"OCSP: .*site\.pem: the certificate is revoked", timeout=20)
    output = s_client_status(https_port)
    assert "OCSP response: no response sent" in output
    assert "Verify return code" in output  # the handshake went through


def test_a_responder_down_leaves_handshakes_unstapled_and_is_logged_once(
    tmp_path, ca, http_backend, proxyd
) -> None:
    responder_port = free_port()  # nothing listens there
    site(ca, tmp_path, responder_port)
    https_port, tcp_port = free_port(), free_port()
    relay = proxyd(listeners(https_port, tcp_port, http_backend.port, tmp_path / "certs/site.pem"))
    relay.wait_for_log(rf"OCSP: .*no response from http://127\.0\.0\.1:{responder_port}/")
    for _ in range(3):
        output = s_client_status(https_port)
        assert "OCSP response: no response sent" in output
        assert "Verify return code" in output
    assert relay.log().count("no response from") == 1
