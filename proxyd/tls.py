"""TLS for the relays: connection creators for listeners (certificate chosen by SNI, ALPN,
client certificates) and for upstream connections (verified with service-identity), and what
a relay reads back from a TLS connection.

Both sides plug into Twisted's TLSMemoryBIOFactory: `ServerTls.wrap(factory)` is the factory a
listener listens with; `ClientTls.wrap(factory, host)` the one an upstream connects with. A
wrapped protocol that provides IHandshakeListener learns when the handshake is done; before
that it must not treat the connection as usable.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import attrs
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import (
    DNS_ID,
    DNSPattern,
    IPAddress_ID,
    IPAddressPattern,
    ServiceID,
    verify_service_identity,
)
from service_identity.pyopenssl import extract_patterns
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.config.model import Certificate, TlsClientConfig, TlsServerConfig
from proxyd.twisted_internals import TlsProtocol

__all__ = [
    "CertificateIndex",
    "ClientTls",
    "PeerTls",
    "ServerTls",
    "Stapling",
    "describe_failure",
    "peer_tls",
]

_log = Logger(namespace="proxyd.tls")


class Stapling(Protocol):
    """Where ServerTls finds OCSP responses (proxyd.ocsp_stapling.OcspStapling)."""

    def key_of(self, certificate: Certificate, tls: TlsServerConfig) -> Any: ...

    def staple(self, key: Any) -> bytes: ...


_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
_BASE_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_SINGLE_ECDH_USE

# X509_V_ERR_* codes a peer's certificate most often fails with (openssl/x509_vfy.h).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsuitable certificate purpose",
}


def _verify_error(errno: int) -> str:
    return _VERIFY_ERRORS.get(errno, f"verify error {errno}")


class CertificateIndex:
    """Which certificate serves a server name: an exact name first, then a wildcard for the
    name's parent (`*.example.com` serves `a.example.com`, not `example.com` nor
    `a.b.example.com`, RFC 6125 6.4.3), else the first certificate."""

    def __init__(self, certificates: Sequence[Certificate]) -> None:
        self._exact: dict[str, int] = {}
        for index, certificate in enumerate(certificates):
            for name in certificate.names:
                self._exact.setdefault(name, index)

    def select(self, server_name: str | None) -> int:
        if not server_name:
            return 0
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is None and "." in name:
            found = self._exact.get("*." + name.split(".", 1)[1])
        return found or 0


@implementer(IOpenSSLServerConnectionCreator)
class ServerTls:
    """TLS termination for one listener, with the certificates its config loaded (a reload
    makes a new one: connections already open keep theirs, new handshakes get the new ones)."""

    def __init__(
        self,
        listener: str,
        config: TlsServerConfig,
        alpn: Sequence[bytes] = (),
        stapling: Stapling | None = None,
    ) -> None:
        """`stapling` holds the OCSP responses to staple (proxyd.ocsp_stapling); None
        staples none."""
        self.listener = listener
        self.config = config
        self._stapling = stapling
        self._alpn = tuple(alpn) or tuple(name.encode("ascii") for name in config.alpn)
        # The session id context ties cached sessions to this listener (OpenSSL refuses to
        # resume sessions without one once client certificates are asked for).
        self._session_id = hashlib.sha256(listener.encode()).digest()[:32]
        self.certificates: tuple[Certificate, ...] = ()
        self._contexts: list[SSL.Context] = []
        self.acme_alpn: Callable[[SSL.Connection], SSL.Context | None] | None = None
        """With `acme`: the tls-alpn-01 validation context of a handshake offering
        acme-tls/1 (proxyd.acme.challenges), or None."""
        self._install(config.loaded)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._contexts[0], None)
        connection.set_app_data(tlsProtocol)
        return connection

    def wrap(self, factory: IProtocolFactory, clock: IReactorTime) -> TLSMemoryBIOFactory:
        return _ServerWrapper(cast(IOpenSSLServerConnectionCreator, self), False, factory, clock)

    def replace(self, certificates: tuple[Certificate, ...]) -> None:
        """Serve `certificates` from the next handshake on (an [acme] certificate renewed);
        connections open keep the contexts they began with."""
        self._install(certificates)

    def _install(self, certificates: tuple[Certificate, ...]) -> None:
        if not certificates:  # an [acme] listener before proxyd.acme gives it one
            return
        contexts = [self._context(certificate) for certificate in certificates]
        index = CertificateIndex(certificates)

        def by_name(connection: SSL.Connection) -> None:
            name = connection.get_servername()
            chosen = index.select(name.decode("ascii", "replace") if name else None)
            if chosen:
                connection.set_context(contexts[chosen])

        contexts[0].set_tlsext_servername_callback(by_name)
        self.certificates, self._contexts = certificates, contexts

    def _context(self, certificate: Certificate) -> SSL.Context:
        config = self.config
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_VERSIONS[config.protocols[0]])
        ctx.set_max_proto_version(_VERSIONS[config.protocols[-1]])
        options = _BASE_OPTIONS
        if config.prefer_server_ciphers:
            options |= SSL.OP_CIPHER_SERVER_PREFERENCE
        if not config.session_tickets:
            options |= SSL.OP_NO_TICKET
        ctx.set_options(options)
        ctx.set_cipher_list(config.ciphers.encode("ascii"))
        ctx.set_tls13_ciphersuites(config.ciphersuites.encode("ascii"))
        ctx.use_certificate(certificate.leaf)
        for issuer in certificate.chain[1:]:
            ctx.add_extra_chain_cert(issuer)
        ctx.use_privatekey(certificate.key)
        ctx.set_session_id(self._session_id)
        if config.session_cache:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
            ctx.set_timeout(max(1, int(config.session_timeout)))
        else:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if config.verify_client != "off":
            assert config.client_ca is not None
            ctx.load_verify_locations(config.client_ca)
            ctx.load_client_ca(config.client_ca.encode())
            mode = SSL.VERIFY_PEER
            if config.verify_client == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            ctx.set_verify(mode, self._verify_client)
        if self._alpn or config.acme is not None:
            ctx.set_alpn_select_callback(self._select_protocol)
        stapling = self._stapling
        key = stapling.key_of(certificate, config) if stapling is not None else None
        if stapling is not None and key is not None:
            # Called in each handshake whose client asks for a status (RFC 6066 8); b""
            # sends none. OpenSSL asks the context SNI chose (SSL_set_SSL_CTX).
            ctx.set_ocsp_server_callback(lambda connection, data: stapling.staple(key))
        return ctx

    def _select_protocol(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        if offered == [b"acme-tls/1"] and self.acme_alpn is not None:
            # RFC 8737 3: a validator offers acme-tls/1 alone; the certificate is chosen
            # here, after SNI, before OpenSSL picks the one it sends.
            validation = self.acme_alpn(connection)
            if validation is None:
                return SSL.NO_OVERLAPPING_PROTOCOLS
            connection.set_context(validation)
            return b"acme-tls/1"
        for protocol in self._alpn:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def _verify_client(
        self, connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            subject = cert.to_cryptography().subject.rfc4514_string() if cert else "?"
            _log.warn(
                "{listener}: client certificate of {client} refused: {why} ({subject})",
                listener=self.listener,
                client=_peer_of(connection),
                why=_verify_error(errno),
                subject=subject,
            )
        return bool(ok)


def _peer_of(connection: SSL.Connection) -> str:
    """The client address of a connection being handshaken, for log lines."""
    protocol = connection.get_app_data()
    transport = getattr(protocol, "transport", None)
    peer: IAddress | None = transport.getPeer() if transport is not None else None
    host, port = getattr(peer, "host", "?"), getattr(peer, "port", 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClientTls:
    """TLS from proxyd to the servers of one pool: one context, and per server a connection
    creator that sends SNI and verifies the certificate's name (or IP address) with
    service-identity, as Twisted's optionsForClientTLS does."""

    def __init__(self, pool: str, config: TlsClientConfig, alpn: Sequence[bytes] = ()) -> None:
        self.pool = pool
        self.config = config
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(_BASE_OPTIONS)
        if config.verify:
            if config.ca is not None:
                ctx.load_verify_locations(config.ca)
            else:
                ctx.set_default_verify_paths()
        if config.certificate is not None:
            ctx.use_certificate(config.certificate.leaf)
            for issuer in config.certificate.chain[1:]:
                ctx.add_extra_chain_cert(issuer)
            ctx.use_privatekey(config.certificate.key)
        if alpn:
            ctx.set_alpn_protos(list(alpn))
        self._context = ctx
        self._creators: dict[str, _ClientCreator] = {}

    def creator(self, host: str) -> IOpenSSLClientConnectionCreator:
        """The creator for a server at `host` (its address); `tls_server_name` wins."""
        name = self.config.server_name or host
        creator = self._creators.get(name)
        if creator is None:
            creator = self._creators[name] = _ClientCreator(self._context, name, self.config)
        return cast(IOpenSSLClientConnectionCreator, creator)

    def wrap(self, factory: Any, host: str, clock: IReactorTime) -> _ClientWrapper:
        return _ClientWrapper(self.creator(host), True, factory, clock)


class _ServerWrapper(TLSMemoryBIOFactory):
    """TLSMemoryBIOFactory whose connections make their interface declaration once
    (proxyd.twisted_internals.TlsProtocol)."""

    protocol = TlsProtocol


class _ClientWrapper(TLSMemoryBIOFactory):
    """TLSMemoryBIOFactory that lets the wrapped factory decline a late connection."""

    def buildProtocol(self, addr: IAddress) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, context: SSL.Context, name: str, config: TlsClientConfig) -> None:
        self._context = context
        self._config = config
        self.name = name
        self._identity: ServiceID
        try:
            self._identity = IPAddress_ID(str(ipaddress.ip_address(name)))
            self._sni: bytes | None = None  # RFC 6066 3: no literal IP addresses in SNI
        except ValueError:
            self._identity = DNS_ID(name)
            self._sni = name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        if self._config.verify:
            connection.set_verify(SSL.VERIFY_PEER, self._verifier(tlsProtocol))
        connection.set_connect_state()
        return connection

    def _verifier(
        self, protocol: TLSMemoryBIOProtocol
    ) -> Callable[[SSL.Connection, Any, int, int, int], bool]:
        identity = self._identity

        def verify(connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            if not ok:
                protocol.failVerification(Failure(CertificateRefused(_verify_error(errno))))
                return False
            if depth != 0:
                return True
            try:
                patterns = extract_patterns(cert)
                verify_service_identity(patterns, [identity], [])
            except VerificationError:
                names = ", ".join(_pattern_text(p) for p in patterns) or "no names"
                why = f"certificate is not for {self.name} ({names})"
            except CertificateError as e:  # a malformed name in the certificate
                why = f"certificate has an invalid name: {e}"
            else:
                return True
            protocol.failVerification(Failure(CertificateRefused(why)))
            return False

        return verify


def _pattern_text(pattern: object) -> str:
    """`DNS:a.example.com` or `IP:10.0.0.5` for a service-identity pattern."""
    if isinstance(pattern, DNSPattern):
        return "DNS:" + pattern.pattern.decode("ascii", "replace")
    if isinstance(pattern, IPAddressPattern):
        return f"IP:{pattern.pattern}"
    return str(pattern)


class CertificateRefused(Exception):
    """An upstream's certificate failed verification; str() says why."""


def describe_failure(reason: Failure) -> str | None:
    """A TLS failure as a short reason (`certificate has expired`, `tlsv1 alert protocol
    version`), or None when `reason` is not about TLS."""
    if reason.check(CertificateRefused):
        return str(reason.value)
    if reason.check(VerificationError):
        return "certificate does not match the server's name"
    if reason.check(SSL.Error):
        args = getattr(reason.value, "args", ())
        if args and isinstance(args[0], list):  # OpenSSL's error queue, maybe empty
            texts = [e[2] for e in args[0] if isinstance(e, tuple) and len(e) == 3 and e[2]]
            return "; ".join(texts) or "TLS error"
        return reason.getErrorMessage() or "TLS error"
    return None


@attrs.frozen
class PeerTls:
    """What a relay may log or pass on about a TLS connection (nginx's $ssl_* variables)."""

    version: str = ""
    cipher: str = ""
    server_name: str = ""
    alpn: str = ""
    client_subject: str = ""
    """RFC 4514 subject of the client's verified certificate; "" if it sent none."""
    client_issuer: str = ""
    client_fingerprint: str = ""
    """SHA-256 of the client certificate's DER, lower-case hex."""
    client_verify: str = ""
    """SUCCESS (a certificate was sent and verified) or NONE."""


def peer_tls(transport: Any) -> PeerTls | None:
    """The TLS facts of a connection whose handshake is done; None if it is not TLS."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, SSL.Connection):
        return None
    name = handle.get_servername()
    alpn = handle.get_alpn_proto_negotiated()
    certificate = handle.get_peer_certificate(as_cryptography=True)
    facts: dict[str, str] = {
        "version": handle.get_protocol_version_name(),
        "cipher": handle.get_cipher_name() or "",
        "server_name": name.decode("ascii", "replace") if name else "",
        "alpn": alpn.decode("ascii", "replace") if alpn else "",
        "client_verify": "NONE",
    }
    if certificate is not None:
        facts.update(
            client_subject=certificate.subject.rfc4514_string(),
            client_issuer=certificate.issuer.rfc4514_string(),
            client_fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
            client_verify="SUCCESS",
        )
    return PeerTls(**facts)
