"""SMTP with STARTTLS through the `[tcp]` relay, and `check = smtp`."""

from __future__ import annotations

import base64
import os
import smtplib
import ssl

import pytest

from .harness import free_port, tcp_config

pytestmark = pytest.mark.integration

CHECK = "check = smtp\ncheck_interval = 200ms\ncheck_timeout = 1s\nrise = 2\nfall = 2"


def make_message() -> bytes:
    """A mail with a 256 KiB attachment and lines that need dot-stuffing, CRLF throughout."""
    attachment = base64.encodebytes(os.urandom(256 * 1024)).replace(b"\n", b"\r\n")
    return (
        b"From: sender@client.test\r\n"
        b"To: rcpt@mx.test\r\n"
        b"Subject: through proxyd\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + attachment + b".\r\n..two dots\r\n.\r\nend\r\n"
    )


@pytest.mark.timeout(60)
def test_mail_with_starttls_through_the_relay_arrives_intact(smtp_server, tls_cert, proxyd):
    port = free_port()
    relay = proxyd(
        tcp_config(
            port,
            [f"127.0.0.1:{smtp_server.port}"],
            pool="mail",
            listener="smtp",
            pool_options=CHECK,
        )
    )
    message = make_message()
    context = ssl.create_default_context(cafile=str(tls_cert[0]))

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.ehlo("client.test")[0] == 250
        assert client.has_extn("starttls")
        assert client.starttls(context=context)[0] == 220
        assert client.ehlo("client.test")[0] == 250
        assert client.sendmail("sender@client.test", ["rcpt@mx.test"], message) == {}

    received = smtp_server.received.get(timeout=10)
    assert received["tls"] is True
    assert received["mail_from"] == "sender@client.test"
    assert received["rcpt_tos"] == ["rcpt@mx.test"]
    assert received["content"] == message

    # The health checks must not have marked the server down meanwhile.
    assert f"127.0.0.1:{smtp_server.port} in pool mail is DOWN" not in relay.log()
    records = [r for r in relay.wait_access_records(1) if r["listener"] == "smtp"]
    assert records[0]["bytes_in"] > len(message)  # TLS adds to it, never takes away


@pytest.mark.timeout(60)
def test_smtp_check_follows_the_server_down_and_up(smtp_server, backend, proxyd):
    not_smtp = backend("echo", name="hello, I am not an SMTP server")
    real = f"127.0.0.1:{smtp_server.port}"
    port = free_port()
    relay = proxyd(
        tcp_config(port, [real, not_smtp.address], pool="mail", listener="smtp", pool_options=CHECK)
    )

    # A server that answers without a 220 greeting fails the check.
    relay.wait_for_state(not_smtp.address, "mail", "DOWN", timeout=10)

    offset = relay.log_offset()
    smtp_server.stop_listening()
    relay.wait_for_state(real, "mail", "DOWN", timeout=10, start=offset)

    offset = relay.log_offset()
    smtp_server.start_listening()
    relay.wait_for_state(real, "mail", "UP", timeout=10, start=offset)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.noop()[0] == 250
    assert f"{not_smtp.address} in pool mail is UP" not in relay.log()
