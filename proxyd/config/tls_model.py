"""The TLS parts of the configuration tree: certificates as read from their files, TLS
termination on a listener (TlsServerConfig) and TLS from a pool to its servers
(TlsClientConfig), with the defaults of both. Frozen attrs values, as the rest of
proxyd.config.model."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from cryptography import x509

from proxyd.config.acme_model import AcmeConfig


@attrs.frozen(eq=False)
class Certificate:
    """A certificate as read from its files: leaf first, then its chain, and its key."""

    path: str
    """The file the certificate came from."""
    key_path: str
    chain: tuple[x509.Certificate, ...]
    key: Any
    """A cryptography private key matching chain[0]."""
    names: tuple[str, ...]
    """The lower-case DNS names (`*.example.com` for a wildcard) and IP addresses it serves:
    its subjectAltName entries, else its subject's common name."""

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc


@attrs.frozen
class CertificateSource:
    """One entry of a `certificates` list: a PEM file or a directory of them."""

    path: str
    key: str | None = None
    """The key file; None looks in the certificate's own file, then beside it (NAME.key)."""


TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")

DEFAULT_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
"""TLS 1.2 ciphers: forward secrecy and AEAD only (Mozilla's intermediate profile without
DHE)."""

DEFAULT_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


@attrs.frozen
class TlsServerConfig:
    """TLS termination on a listener: `certificates` and the `tls_*` keys."""

    certificates: tuple[CertificateSource, ...]
    loaded: tuple[Certificate, ...] = attrs.field(eq=False)
    """The certificates as read when the configuration was loaded; the first is the default
    for clients that send no (or an unknown) server name. SIGHUP reads `certificates` anew."""
    protocols: tuple[str, ...] = TLS_PROTOCOLS
    ciphers: str = DEFAULT_CIPHERS
    ciphersuites: str = DEFAULT_CIPHERSUITES
    prefer_server_ciphers: bool = True
    session_tickets: bool = True
    session_cache: bool = True
    session_timeout: float = 300.0
    verify_client: str = "off"
    """off | optional | required: ask for a client certificate, verified against client_ca."""
    client_ca: str | None = None
    alpn: tuple[str, ...] = ()
    """Protocols offered by ALPN ([tcp] listeners; [https] offers http/1.1)."""
    expired_certificates: str = "warn"
    """warn | refuse: what an expired certificate does at start and on reload."""
    ocsp_stapling: bool = True
    """Staple OCSP responses for the certificates that name a responder (proxyd.ocsp)."""
    ocsp_responder: str | None = None
    """An http:// URL asked instead of the one each certificate names."""
    acme: AcmeConfig | None = None
    """`acme = NAME`: the [acme] section whose certificate this listener serves (before those
    of `certificates`, which may be empty then)."""


@attrs.frozen
class TlsClientConfig:
    """A pool's `tls` and `tls_*` keys: TLS from proxyd to the pool's servers."""

    enabled: bool = False
    """`tls = on`: relays speak TLS to the servers (the `tls` check kind uses the other keys
    either way)."""
    ca: str | None = None
    """CA bundle file; None is the system's trust store."""
    verify: bool = True
    server_name: str | None = None
    """SNI and the name verified; None uses each server's host (an IP is verified against the
    certificate's IP addresses and sends no SNI)."""
    certificate: Certificate | None = None
    """A client certificate presented to servers that ask for one."""
