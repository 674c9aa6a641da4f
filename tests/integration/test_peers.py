"""The peers work without proxyd in the way: when a proxyd test fails, these tell whether the
harness or proxyd is at fault."""

from __future__ import annotations

import smtplib
import socket
import ssl
import struct

import pytest

from .harness import connect, recv_all, recv_line, wait_until
from .mariadb import connect_through, server_port
from .peers import pattern_chunks, pattern_digest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
def test_peers_answer_directly(backend):
    echo = backend("echo", name="alpha")
    with connect(echo.port) as sock:
        assert recv_line(sock) == b"alpha\n"
        sock.sendall(b"ping\n")
        assert recv_line(sock) == b"ping\n"

    count = backend("count")
    with connect(count.port) as sock:
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"100000\n"

    size = 3 * (1 << 20) + 17
    source = backend("source", "--size", str(size))
    with connect(source.port) as sock:
        data = recv_all(sock, limit=size + 1)
    assert len(data) == size
    assert data == b"".join(pattern_chunks(size))

    sink = backend("sink")
    with connect(sink.port) as sock:
        sock.sendall(struct.pack("!Q", size))
        for chunk in pattern_chunks(size):
            sock.sendall(chunk)
        assert recv_line(sock) == f"{size} {pattern_digest(size)}\n".encode()


@pytest.mark.timeout(60)
def test_mariadb_fixture_serves_restarts_and_stops(mariadb):
    server = mariadb("solo")
    with connect_through(server.port) as conn:
        assert server_port(conn) == server.port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(server.port, timeout=2)
    server.start()
    with connect_through(server.port) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 1 + 1")
        assert cursor.fetchone() == (2,)


@pytest.mark.timeout(60)
def test_smtp_fixture_requires_and_accepts_starttls(smtp_server, tls_cert):
    context = ssl.create_default_context(cafile=str(tls_cert[0]))
    with smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.sendmail("a@test", ["b@test"], b"Subject: plain\r\n\r\nno tls\r\n")
    with smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10) as client:
        client.starttls(context=context)
        client.sendmail("a@test", ["b@test"], b"Subject: tls\r\n\r\nwith tls\r\n")
    message = smtp_server.received.get(timeout=10)
    assert message["tls"] is True
    assert message["content"] == b"Subject: tls\r\n\r\nwith tls\r\n"

    smtp_server.stop_listening()
    wait_until(lambda: _refused(smtp_server.port), 5, "the SMTP port to close")
    smtp_server.start_listening()
    with smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10) as client:
        assert client.noop()[0] == 250


def _refused(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False
