"""TLS in the real proxyd, seen by curl, openssl s_client, Python's ssl and smtplib: certificates
by SNI, protocol versions, ALPN, mTLS, TLS to upstreams, SNI passthrough, TLS on a TCP
listener, the tls check, and a certificate reload under an open connection."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.certs import Issued, TestCA, self_signed

from .harness import Backend, ProcessList, free_port, wait_until
from .smtp import SmtpServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def certs(tmp_path: Path, ca: TestCA) -> Callable[..., Path]:
    """`certs(name, names)` writes a certificate (chain and key in one PEM) for `names`."""
    directory = tmp_path / "certs"
    directory.mkdir()
    ca.write_ca(directory / "ca.pem")

    def make(name: str, names: list[str], issued: Issued | None = None) -> Path:
        return (issued or ca.issue(names)).write(directory / f"{name}.pem")

    return make


@pytest.fixture
def http_backend(processes: ProcessList) -> Backend:
    port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(port)]
    process = processes.start("http-backend", [*argv, "--name", "b1"])
    process.wait_listening([port], 15)
    return Backend(process, port)


@pytest.fixture
def tls_server(processes: ProcessList) -> Callable[[Path], int]:
    """`tls_server(pem)`: an `openssl s_server -www` with that certificate; its port."""

    def start(pem: Path) -> int:
        port = free_port()
        argv = ["openssl", "s_server", "-quiet", "-www", "-accept", str(port), "-cert", str(pem)]
        argv += ["-naccept", "1000"]
        process = processes.start(f"s_server-{pem.stem}", argv)
        process.wait_listening([port], 15)
        return port

    return start


def s_client(port: int, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=20,
    )


def subject_seen(port: int, *args: str) -> str:
    result = s_client(port, *args)
    match = re.search(r"^subject=.*CN ?= ?([^,\n]+)", result.stdout, re.M)
    assert match, result.stdout + result.stderr
    return match.group(1).strip()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def https_config(port: int, backend_port: int, certificates: str, extra: str = "") -> str:
    return (
        f"[pool web]\nservers = 127.0.0.1:{backend_port}\n\n"
        f"[https front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"certificates =\n{certificates}\nroutes =\n    path / -> pool web\n{extra}\n"
    )


def test_sni_picks_the_certificate_of_each_name_and_the_first_by_default(
    certs, http_backend, proxyd
) -> None:
    paths = [
        certs("default", ["default.example.test"]),
        certs("a", ["a.example.test"]),
        certs("b", ["b.example.test"]),
        certs("c", ["*.c.example.test"]),
    ]
    port = free_port()
    proxyd(https_config(port, http_backend.port, "".join(f"    {p}\n" for p in paths)))
    assert subject_seen(port, "-servername", "a.example.test") == "a.example.test"
    assert subject_seen(port, "-servername", "b.example.test") == "b.example.test"
    assert subject_seen(port, "-servername", "x.c.example.test") == "*.c.example.test"
    assert subject_seen(port, "-servername", "unknown.test") == "default.example.test"
    assert subject_seen(port, "-noservername") == "default.example.test"
    ca_file = paths[0].parent / "ca.pem"
    for name in ("a.example.test", "x.c.example.test"):
        result = curl(
            "--cacert", str(ca_file), "--resolve", f"{name}:{port}:127.0.0.1",
            f"https://{name}:{port}/echo",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        headers = dict(json.loads(result.stdout)["headers"])
        assert headers["X-Forwarded-Proto"] == "https"


def test_old_protocols_are_refused_and_alpn_gives_http_1_1_without_http2(
    certs, http_backend, proxyd
) -> None:
    port = free_port()
    pem = certs("a", ["a.test"])
    relay = proxyd(https_config(port, http_backend.port, f"    {pem}\n", "http2 = off\n"))
    for option in ("-tls1", "-tls1_1"):
        result = s_client(port, option, "-cipher", "DEFAULT@SECLEVEL=0")
        assert "Cipher is (NONE)" in result.stdout or "alert" in result.stderr, result.stderr
        assert not re.search(r"Protocol *: *TLSv1(\.1)?\n", result.stdout) or "(NONE)" in (
            result.stdout
        )
    relay.wait_for_log(r"TLS handshake with .* failed: unsupported protocol")
    for option, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        result = s_client(port, option, "-alpn", "h2,http/1.1")
        assert f"New, {version}" in result.stdout, result.stdout
        assert "ALPN protocol: http/1.1" in result.stdout


def test_client_certificates_required_pass_the_subject_or_refuse_the_client(
    tmp_path, certs, http_backend, proxyd
) -> None:
    clients_ca = TestCA("clients CA")
    clients_ca.write_ca(tmp_path / "clients-ca.pem")
    alice = clients_ca.issue(["alice"], client=True)
    alice.write(tmp_path / "alice.pem")
    TestCA("another CA").issue(["mallory"], client=True).write(tmp_path / "mallory.pem")
    server = certs("a", ["a.test"])
    port = free_port()
    extra = (
        f"tls_verify_client = required\ntls_client_ca = {tmp_path / 'clients-ca.pem'}\n"
        "request_headers =\n    set X-Client-Subject {tls_client_subject}\n"
        "    set X-Client-Fingerprint {tls_client_fingerprint}\n"
    )
    relay = proxyd(https_config(port, http_backend.port, f"    {server}\n", extra))
    base = ["--cacert", str(server.parent / "ca.pem"), "--resolve", f"a.test:{port}:127.0.0.1"]
    url = f"https://a.test:{port}/echo"
    good = curl(*base, "--cert", str(tmp_path / "alice.pem"), url)
    assert good.returncode == 0, good.stderr
    headers = dict(json.loads(good.stdout)["headers"])
    assert headers["X-Client-Subject"] == "CN=alice,O=proxyd tests"
    assert headers["X-Client-Fingerprint"] == alice.fingerprint
    assert curl(*base, url).returncode != 0
    assert curl(*base, "--cert", str(tmp_path / "mallory.pem"), url).returncode != 0
    relay.wait_for_log(r"client certificate of 127\.0\.0\.1:\d+ refused: .*CN=(mallory|another)")
    relay.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: peer did not return")


def test_upstream_tls_verifies_the_server_and_a_wrong_certificate_is_a_502(
    certs, ca, tls_server, proxyd
) -> None:
    good = tls_server(certs("up", ["127.0.0.1"]))
    bad = tls_server(certs("bad", ["127.0.0.1"], self_signed(["127.0.0.1"])))
    wrong_name = tls_server(certs("other", ["other.test"]))
    ca_file = certs("x", ["x"]).parent / "ca.pem"
    port = free_port()
    pools = "".join(
        f"[pool {name}]\nservers = 127.0.0.1:{p}\ntls = on\ntls_ca = {ca_file}\n\n"
        for name, p in (("good", good), ("bad", bad), ("wrong", wrong_name))
    )
    relay = proxyd(
        f"{pools}[http front]\nlisten = tcp:{port}:interface=127.0.0.1\nretries = 0\n"
        "routes =\n    path /bad -> pool bad\n    path /wrong -> pool wrong\n"
        "    path / -> pool good\n"
    )
    ok = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/")
    assert ok.stdout == "200"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/bad").stdout == (
        "502"
    )
    relay.wait_for_log(r"pool bad: TLS handshake failed: unable to get local issuer certificate")
    wrong = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/wrong")
    assert wrong.stdout == "502"
    relay.wait_for_log(r"pool wrong: TLS handshake failed: certificate is not for 127\.0\.0\.1")


def test_tls_verify_off_is_warned_about_at_start(certs, tls_server, proxyd) -> None:
    bad = tls_server(certs("bad", ["x"], self_signed(["x"])))
    port = free_port()
    relay = proxyd(
        f"[pool p]\nservers = 127.0.0.1:{bad}\ntls = on\ntls_verify = off\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\nroutes =\n    path / -> pool p\n"
    )
    relay.wait_for_log(r"\[pool p\] tls_verify = off")
    ok = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/")
    assert ok.stdout == "200"


def test_sni_passthrough_delivers_each_backends_own_certificate(certs, tls_server, proxyd) -> None:
    a = tls_server(certs("a", ["a.example.test"]))
    b = tls_server(certs("b", ["b.example.test"]))
    fallback = tls_server(certs("fallback", ["fallback.example.test"]))
    port = free_port()
    relay = proxyd(
        f"[pool a]\nservers = 127.0.0.1:{a}\n[pool b]\nservers = 127.0.0.1:{b}\n"
        f"[pool fallback]\nservers = 127.0.0.1:{fallback}\n\n"
        f"[tcp edge]\nlisten = tcp:{port}:interface=127.0.0.1\nroute_by = sni\n"
        "routes =\n    a.example.test -> pool a\n    *.b.example.test -> pool b\n"
        "pool = fallback\n"
    )
    assert subject_seen(port, "-servername", "a.example.test") == "a.example.test"
    assert subject_seen(port, "-servername", "x.b.example.test") == "b.example.test"
    assert subject_seen(port, "-servername", "nothing.test") == "fallback.example.test"
    assert subject_seen(port, "-noservername") == "fallback.example.test"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100) == b""  # not TLS: closed
    records = relay.wait_access_records(5)
    assert {r.get("sni") for r in records} >= {"a.example.test", "x.b.example.test"}
    assert any(r["close"] == "bad_client_hello" for r in records)


def test_sni_passthrough_without_a_default_refuses_unknown_names(certs, tls_server, proxyd) -> None:
    a = tls_server(certs("a", ["a.example.test"]))
    port = free_port()
    proxyd(
        f"[pool a]\nservers = 127.0.0.1:{a}\n\n"
        f"[tcp edge]\nlisten = tcp:{port}:interface=127.0.0.1\nroute_by = sni\n"
        "routes =\n    a.example.test -> pool a\n"
    )
    result = s_client(port, "-servername", "nothing.test")
    assert "unrecognized name" in result.stderr


@pytest.fixture
def plain_smtp_server(tls_cert: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """An SMTP server that accepts mail without STARTTLS (TLS is proxyd's job here)."""
    server = SmtpServer(*tls_cert, require_starttls=False)
    try:
        server.start_listening()
        yield server
    finally:
        server.close()


def test_smtps_terminated_on_a_tcp_listener_reaches_a_plain_smtp_server(
    certs, plain_smtp_server, proxyd
) -> None:
    smtp_server = plain_smtp_server
    pem = certs("mail", ["mail.example.test", "127.0.0.1"])
    port = free_port()
    relay = proxyd(
        f"[pool mail]\nservers = 127.0.0.1:{smtp_server.port}\n\n"
        f"[tcp smtps]\nlisten = tcp:{port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "pool = mail\n"
    )
    context = ssl.create_default_context(cafile=str(pem.parent / "ca.pem"))
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@client.test", "b@mx.test", "hi"
    message.set_content("over TLS to proxyd, plain to the server\n")
    with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10) as client:
        assert client.ehlo("client.test")[0] == 250
        client.send_message(message)
    received = smtp_server.received.get(timeout=10)
    assert received["tls"] is False  # the server saw plaintext
    assert received["rcpt_tos"] == ["b@mx.test"]
    [record] = [r for r in relay.wait_access_records(1) if r["listener"] == "smtps"]
    assert record["tls_version"] in ("TLSv1.2", "TLSv1.3")


def whole_response(tls: ssl.SSLSocket) -> bytes:
    """One response with a Content-Length, read whole: its head and body may come in
    separate TLS records (as the server sent them), each a recv() of its own."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = tls.recv(65536)
        assert chunk, f"closed after {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_sighup_reloads_certificates_without_dropping_an_open_connection(
    certs, ca, http_backend, proxyd
) -> None:
    path = certs("site", ["old.example.test", "127.0.0.1"])
    port = free_port()
    relay = proxyd(https_config(port, http_backend.port, f"    {path}\n"))
    context = ssl.create_default_context(cafile=str(path.parent / "ca.pem"))
    held = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1"
    )
    assert held.getpeercert()["subject"][-1][0][1] == "old.example.test"
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    held.sendall(request)
    assert whole_response(held).startswith(b"HTTP/1.1 200 ")

    ca.issue(["new.example.test", "127.0.0.1"]).write(path)
    start = relay.log_offset()
    relay.process.signal_group(signal.SIGHUP)
    relay.wait_for_log(r"reloaded .*: generation 2", start=start)
    assert subject_seen(port, "-servername", "x.test") == "new.example.test"
    held.sendall(request)
    assert whole_response(held).startswith(b"HTTP/1.1 200 ")

    path.write_text("not a certificate\n")
    start = relay.log_offset()
    relay.process.signal_group(signal.SIGHUP)
    relay.wait_for_log(r"reload refused: .*site\.pem", start=start)
    assert subject_seen(port, "-servername", "x.test") == "new.example.test"
    held.close()


def test_a_tls_check_takes_a_server_with_a_bad_certificate_down(certs, tls_server, proxyd) -> None:
    good = tls_server(certs("good", ["127.0.0.1"]))
    bad = tls_server(certs("bad", ["127.0.0.1"], self_signed(["127.0.0.1"])))
    ca_file = certs("x", ["x"]).parent / "ca.pem"
    relay = proxyd(
        f"[pool p]\nservers = 127.0.0.1:{good} 127.0.0.1:{bad}\ncheck = tls\n"
        f"check_interval = 200ms\ntls_ca = {ca_file}\n\n"
        f"[tcp t]\nlisten = tcp:{free_port()}:interface=127.0.0.1\npool = p\n"
    )
    match = relay.wait_for_state(f"127.0.0.1:{bad}", "p", "DOWN")
    assert "TLS handshake failed" in relay.log()[match.start() : match.start() + 300]
    wait_until(lambda: f"127.0.0.1:{good} in pool p is DOWN" not in relay.log(), 1, "good up")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_resume(certs, http_backend, proxyd, version: ssl.TLSVersion) -> None:
    path = certs("site", ["127.0.0.1"])
    port = free_port()
    proxyd(https_config(port, http_backend.port, f"    {path}\n"))
    context = ssl.create_default_context(cafile=str(path.parent / "ca.pem"))
    context.minimum_version = context.maximum_version = version

    def one_request(session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(sock, server_hostname="127.0.0.1", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):  # to the end: TLS 1.3 tickets come after the handshake
                pass
            assert tls.session is not None
            return tls.session, tls.session_reused

    session, reused = one_request()
    assert not reused
    assert one_request(session)[1]
