"""An aiosmtpd server with STARTTLS in a thread of the test process, and its throwaway cert."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import queue
import ssl
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxyd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Handler:
    def __init__(self, received: queue.Queue[dict[str, Any]]) -> None:
        self.received = received

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.put(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "content": envelope.original_content,
                "tls": session.ssl is not None,
            }
        )
        return "250 OK: queued"


class SmtpServer:
    """Listens on 127.0.0.1:`port`, requires STARTTLS, puts each message on `received`.
    `stop_listening()` / `start_listening()` close and reopen the port (for health checks)."""

    def __init__(self, cert: Path, key: Path, require_starttls: bool = True) -> None:
        self.require_starttls = require_starttls
        self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls_context.load_cert_chain(cert, key)
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.handler = _Handler(self.received)
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_listening(self) -> None:
        async def listen() -> None:
            def factory() -> SMTP:
                return SMTP(
                    self.handler,
                    hostname="mx.test",
                    tls_context=self.tls_context,
                    require_starttls=self.require_starttls,
                    timeout=30,
                )

            self._server = await self.loop.create_server(
                factory, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(listen())

    def stop_listening(self) -> None:
        async def close() -> None:
            if self._server is not None:
                # Not wait_closed(): from Python 3.12 it also waits for open sessions.
                self._server.close()
                self._server = None

        self._call(close())

    def close(self) -> None:
        try:
            self.stop_listening()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()
