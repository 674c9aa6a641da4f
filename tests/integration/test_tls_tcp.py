"""TLS on [tcp] listeners in the real proxyd, beyond test_https.py: SNI passthrough of a
ClientHello cut into many records and reads, and of one that stops halfway; termination with
tls_alpn, handshake_timeout, a handshake that fails before any server is dialled, and a reload
under an open connection; TLS to the servers of a pool, from plaintext and re-encrypted."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.certs import self_signed

from .harness import connect, free_port, recv_all, recv_line
from .tlsclient import (
    client_context,
    curl,
    dns_names,
    fails,
    names_seen,
    reload,
    tls_connection,
)

pytestmark = pytest.mark.integration


def closed(sock: socket.socket) -> bool:
    """Whether the peer ends the connection (FIN or RST) before sending anything."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def fragmented(hello: bytes, size: int) -> bytes:
    """The handshake records of `hello` re-cut into records of at most `size` bytes each (a
    handshake message may span records, RFC 8446 5.1)."""
    out = b""
    while hello:
        kind, version, length = hello[0], hello[1:3], int.from_bytes(hello[3:5], "big")
        body, hello = hello[5 : 5 + length], hello[5 + length :]
        assert kind == 22, "not a handshake record"
        for at in range(0, len(body), size):
            piece = body[at : at + size]
            out += bytes([kind]) + version + len(piece).to_bytes(2, "big") + piece
    return out


def handshake_in_pieces(port: int, server_name: str, context: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake over 127.0.0.1:`port` whose ClientHello goes out in 30-byte records,
    written 16 bytes at a time with Nagle off; the rest of the handshake as it comes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    data = fragmented(outgoing.read(), 30)
    with connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(data), 16):
            sock.sendall(data[at : at + 16])
            time.sleep(0.003)  # pacing, so that proxyd gets the pieces in separate reads
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                chunk = sock.recv(65536)
                assert chunk, "closed during the handshake"
                incoming.write(chunk)
        if pending := outgoing.read():
            sock.sendall(pending)
    return tls


def test_sni_passthrough_reads_a_client_hello_in_pieces_and_times_out_a_partial_one(
    certs, tls_server, proxyd
) -> None:
    a = tls_server(certs("a", ["a.example.test"]))
    b = tls_server(certs("b", ["b.example.test"]))
    cafile = certs("x", ["x"]).parent / "ca.pem"
    port = free_port()
    relay = proxyd(
        f"[pool a]\nservers = 127.0.0.1:{a}\n[pool b]\nservers = 127.0.0.1:{b}\n\n"
        f"[tcp edge]\nlisten = tcp:{port}:interface=127.0.0.1\nroute_by = sni\n"
        "handshake_timeout = 2s\n"
        "routes =\n    A.Example.Test -> pool a\n    b.example.test -> pool b\n"
        "    *.w.example.test -> pool b\n"
    )
    tls = handshake_in_pieces(port, "b.example.test", client_context(cafile))
    assert dns_names(tls) == ["b.example.test"]  # verified by name: b's own certificate
    assert names_seen(port, "a.EXAMPLE.test", cafile) == ["a.example.test"]
    assert names_seen(port, "x.w.example.test", cafile) == ["b.example.test"]
    for name in ("w.example.test", "y.x.w.example.test"):  # a wildcard is one label
        assert "unrecognized name" in fails(names_seen, port, name, cafile), name

    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    half = client_context(cafile).wrap_bio(*hello, server_hostname="a.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        half.do_handshake()
    with connect(port) as sock:
        sock.sendall(hello[1].read()[:40])
        started = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - started > 1.5  # handshake_timeout, not at once
    relay.wait_for_log(r"tcp edge: 127\.0\.0\.1:\d+: no ClientHello within 2(\.0)?s")
    records = relay.wait_access_records(6)
    assert {r.get("sni") for r in records} >= {"b.example.test", "a.example.test"}
    [timed_out] = [r for r in records if r["close"] == "handshake_timeout"]
    assert timed_out["backend"] is None


def test_tls_termination_on_tcp_alpn_timeouts_failures_and_a_reload(
    tmp_path, ca, certs, backend, proxyd
) -> None:
    echo = backend("echo", name="echo-1")
    pem = certs("mail", ["mail.example.test"])
    cafile = pem.parent / "ca.pem"
    port = free_port()
    relay = proxyd(
        f"[pool echo]\nservers = {echo.address}\n\n"
        f"[tcp mail]\nlisten = tcp:{port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "tls_alpn = imap smtp\nhandshake_timeout = 1s\npool = echo\n"
    )
    context = client_context(cafile, alpn=["smtp", "imap"])
    with tls_connection(port, "mail.example.test", context) as held:
        assert held.selected_alpn_protocol() == "imap"  # the listener's order
        assert recv_line(held) == b"echo-1\n"
        held.sendall(b"before\n")
        assert recv_line(held) == b"before\n"

        # A client that never starts its handshake, and one that speaks plaintext.
        with connect(port) as silent:
            started = time.monotonic()
            assert closed(silent)
            assert time.monotonic() - started > 0.8
        relay.wait_for_log(r"tcp mail: 127\.0\.0\.1:\d+: no TLS handshake within 1(\.0)?s")
        with connect(port) as plain:
            plain.sendall(b"EHLO client.test\r\n")
            assert b"echo-1" not in recv_all(plain)  # closed (perhaps after an alert)
        failed = [r for r in relay.wait_access_records(2) if r["close"] == "tls_handshake_failed"]
        assert len(failed) == 2
        assert all(r["backend"] is None and r["connect_attempts"] == 0 for r in failed)

        # A new certificate on disk and SIGHUP: new handshakes get it, the held one goes on.
        ca.issue(["mail2.example.test"]).write(pem)
        reload(relay, r"reloaded .*: generation 2")
        assert names_seen(port, "mail.example.test", cafile) == ["mail2.example.test"]
        held.sendall(b"after\n")
        assert recv_line(held) == b"after\n"


def test_tcp_pools_speak_tls_to_their_servers_from_plaintext_or_re_encrypted(
    certs, tls_server, proxyd
) -> None:
    good = tls_server(certs("upstream", ["127.0.0.1"]))
    bad = tls_server(certs("bad", ["127.0.0.1"], self_signed(["127.0.0.1"])))
    front = certs("front", ["front.example.test"])
    cafile = front.parent / "ca.pem"
    plain, wrong, both = free_port(), free_port(), free_port()
    relay = proxyd(
        f"[pool good]\nservers = 127.0.0.1:{good}\ntls = on\ntls_ca = {cafile}\n"
        f"[pool bad]\nservers = 127.0.0.1:{bad}\ntls = on\ntls_ca = {cafile}\n\n"
        f"[tcp plain]\nlisten = tcp:{plain}:interface=127.0.0.1\npool = good\n"
        f"[tcp wrong]\nlisten = tcp:{wrong}:interface=127.0.0.1\npool = bad\n"
        f"[tcp both]\nlisten = tcp:{both}:interface=127.0.0.1\npool = good\n"
        f"certificates = {front}\n"
    )
    request = b"GET / HTTP/1.0\r\n\r\n"
    with connect(plain) as sock:
        sock.sendall(request)
        answer = recv_all(sock)
    # s_server -www answers with its view of the session: TLS, from proxyd.
    assert answer.startswith(b"HTTP/1.0 200 ok"), answer[:200]
    assert b"TLSv1.3" in answer or b"TLSv1.2" in answer

    with tls_connection(both, "front.example.test", client_context(cafile)) as tls:
        assert dns_names(tls) == ["front.example.test"]
        tls.sendall(request)
        assert recv_all(tls).startswith(b"HTTP/1.0 200 ok")

    with connect(wrong) as sock:
        sock.sendall(request)
        assert recv_all(sock) == b""
    relay.wait_for_log(
        rf"tcp wrong: connect to 127\.0\.0\.1:{bad} failed: TLS handshake failed: "
        r"unable to get local issuer certificate"
    )


def test_a_server_that_never_finishes_its_handshake_is_given_up_after_connect_timeout(
    certs, backend, proxyd
) -> None:
    silent = backend("count")  # accepts, reads, never answers a ClientHello
    cafile = certs("x", ["x"]).parent / "ca.pem"
    http, tcp = free_port(), free_port()
    relay = proxyd(
        f"[pool p]\nservers = {silent.address}\ntls = on\ntls_ca = {cafile}\n\n"
        f"[http h]\nlisten = tcp:{http}:interface=127.0.0.1\nconnect_timeout = 1s\n"
        "retries = 0\nroutes =\n    path / -> pool p\n\n"
        f"[tcp t]\nlisten = tcp:{tcp}:interface=127.0.0.1\nconnect_timeout = 1s\npool = p\n"
    )
    started = time.monotonic()
    with connect(tcp) as sock:
        sock.sendall(b"hello\n")
        assert closed(sock)
    assert 0.8 < time.monotonic() - started < 5
    relay.wait_for_log(
        rf"tcp t: connect to {silent.address} failed: TLS handshake not done within "
        r"connect_timeout 1s"
    )
    started = time.monotonic()
    status = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{http}/").stdout
    assert status in ("502", "504")
    assert 0.8 < time.monotonic() - started < 5
