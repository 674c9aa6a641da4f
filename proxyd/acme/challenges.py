"""The answers to ACME challenges, given while an order is pending.

http-01 (RFC 8555 8.3): `GET /.well-known/acme-challenge/TOKEN` on port 80 is answered with
the key authorization, by any [http] listener, before routing. tls-alpn-01 (RFC 8737): a
handshake offering only ALPN `acme-tls/1` for a name gets a self-signed certificate for that
name with the critical acmeIdentifier extension holding SHA-256 of the key authorization.

Answers are kept in memory by the process that orders, and in the storage directory for the
worker processes (which look there when they have none in memory)."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from OpenSSL import SSL

from proxyd.acme.storage import Storage, private_pem

CHALLENGE_PATH = b"/.well-known/acme-challenge/"
ACME_TLS_ALPN = b"acme-tls/1"
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
"""id-pe-acmeIdentifier (RFC 8737 6.1)."""


def acme_identifier_value(key_authorization: str) -> bytes:
    """The extension's DER value: an OCTET STRING of SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest


def self_signed(
    common_name: str, names: Sequence[str], critical: x509.ExtensionType | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A week's self-signed P-256 certificate for `names` (and `critical`, an extension
    marked critical), and its key: a validation certificate, or the placeholder served
    until the first certificate is issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    if critical is not None:
        builder = builder.add_extension(critical, critical=True)
    return builder.sign(key, hashes.SHA256()), key


def validation_certificate(name: str, key_authorization: str) -> bytes:
    """The RFC 8737 3 validation certificate for `name` and its key, as PEM."""
    identifier = x509.UnrecognizedExtension(
        ACME_IDENTIFIER, acme_identifier_value(key_authorization)
    )
    certificate, key = self_signed(name, [name], identifier)
    return certificate.public_bytes(serialization.Encoding.PEM) + private_pem(key)


def _context(pem: bytes) -> SSL.Context:
    certificate = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(pem, password=None)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(certificate)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    return ctx


class Answers:
    """The pending challenges of one [acme] section: http-01 tokens and tls-alpn-01
    certificates, in memory, with the storage directory behind them."""

    def __init__(self, storage: Storage, names: Sequence[str]) -> None:
        self.storage = storage
        self.names = frozenset(names)
        self._tokens: dict[str, str] = {}
        self._alpn: dict[str, SSL.Context] = {}

    # Set by the process that orders (on the reactor's thread).

    def add_http(self, token: str, key_authorization: str) -> None:
        self._tokens[token] = key_authorization
        self.storage.put_http_token(token, key_authorization)

    def add_alpn(self, name: str, key_authorization: str) -> None:
        pem = validation_certificate(name, key_authorization)
        self._alpn[name] = _context(pem)
        self.storage.put_alpn_certificate(name, pem)

    def clear(self) -> None:
        """The order is over: forget its answers (memory and disk)."""
        for token in self._tokens:
            self.storage.drop_http_token(token)
        for name in self._alpn:
            self.storage.drop_alpn_certificate(name)
        self._tokens.clear()
        self._alpn.clear()

    # Asked by the listeners.

    def http(self, token: str) -> str | None:
        """The key authorization for `token`, or None."""
        found = self._tokens.get(token)
        if found is None:
            found = self.storage.http_token(token)
        return found

    def alpn(self, name: str) -> SSL.Context | None:
        """The context with the validation certificate for `name`, or None."""
        found = self._alpn.get(name)
        if found is None and name in self.names:
            pem = self.storage.alpn_certificate(name)
            if pem is not None:
                try:
                    found = _context(pem)
                except (ValueError, SSL.Error):
                    return None
        return found


class HttpChallenges:
    """What an [http] listener answers `/.well-known/acme-challenge/TOKEN` from: the answers
    of every [acme] section of the configuration."""

    def __init__(self, answers: Sequence[Answers]) -> None:
        self.answers = tuple(answers)

    def answer(self, target: bytes) -> bytes | None:
        """The body for a request target, or None (not a challenge we hold: routed as
        usual)."""
        if not target.startswith(CHALLENGE_PATH):
            return None
        token = target[len(CHALLENGE_PATH) :].split(b"?", 1)[0].decode("ascii", "replace")
        for answers in self.answers:
            found = answers.http(token)
            if found is not None:
                return found.encode("ascii")
        return None


class AlpnChallenges:
    """The tls-alpn-01 hook of a TLS listener (proxyd.tls.ServerTls.acme_alpn): the
    validation context for a handshake that offers `acme-tls/1`."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def __call__(self, connection: Any) -> SSL.Context | None:
        name = connection.get_servername()
        if not name:
            return None
        return self.answers.alpn(name.decode("ascii", "replace").lower().rstrip("."))
