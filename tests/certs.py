"""A test CA and certificates, made at test time with cryptography (no key is committed).

    ca = TestCA("proxyd test CA")
    leaf = ca.issue(["a.example.test", "*.b.example.test", "127.0.0.1"])
    leaf.write(tmp_path / "a.pem")             # certificate, chain and key in one file
    ca.write_ca(tmp_path / "ca.pem")

EC P-256 keys: fast to make, and what a modern deployment uses.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@attrs.define
class Issued:
    """A certificate, the chain above it (without the root) and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    def pem(self, with_key: bool = True) -> bytes:
        data = cert_pem(self.cert) + b"".join(cert_pem(c) for c in self.chain)
        return data + key_pem(self.key) if with_key else data

    def write(self, path: Path, with_key: bool = True) -> Path:
        path.write_bytes(self.pem(with_key))
        return path

    def write_key(self, path: Path) -> Path:
        path.write_bytes(key_pem(self.key))
        return path

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


class TestCA:
    """A self-signed root that issues server and client certificates."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "proxyd test CA") -> None:
        self.key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - _DAY)
            .not_valid_after(_now() + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(cert_pem(self.cert))
        return path

    def issue(
        self,
        names: list[str],
        *,
        client: bool = False,
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        san: bool = True,
        ocsp_url: str | None = None,
        must_staple: bool = False,
        usage: x509.ObjectIdentifier | None = None,
    ) -> Issued:
        """A leaf for `names` (DNS names and IP addresses), valid from yesterday for 90 days
        unless told otherwise; `client` makes it a client certificate. `ocsp_url` names an
        OCSP responder (Authority Information Access), `must_staple` adds the TLS Feature
        status_request (RFC 7633), `usage` replaces the extended key usage (OCSP_SIGNING
        for a delegated responder)."""
        key = new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proxyd tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0]),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or _now() - _DAY)
            .not_valid_after(not_after or _now() + 90 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [
                        usage
                        or (
                            ExtendedKeyUsageOID.CLIENT_AUTH
                            if client
                            else ExtendedKeyUsageOID.SERVER_AUTH
                        )
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if ocsp_url is not None:
            builder = builder.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(ocsp_url),
                        )
                    ]
                ),
                critical=False,
            )
        if must_staple:
            builder = builder.add_extension(
                x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
            )
        if san:
            entries: list[x509.GeneralName] = []
            for name in names:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    entries.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def ocsp_response(
        self,
        issued: Issued,
        status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
        *,
        this_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
        lifetime: datetime.timedelta | None = 7 * _DAY,
        signer: Issued | None = None,
    ) -> bytes:
        """A DER OCSP response for `issued` (issued by this CA) saying `status`, signed by
        this CA or by `signer` (a delegated responder, whose certificate goes in the
        response). nextUpdate is `next_update`, else thisUpdate + `lifetime` (None: none)."""
        this_update = this_update or _now() - datetime.timedelta(minutes=5)
        if next_update is None and lifetime is not None:
            next_update = this_update + lifetime
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=issued.cert,
            issuer=self.cert,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=this_update - _DAY if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        if signer is None:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert)
            response = builder.sign(self.key, hashes.SHA256())
        else:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
            builder = builder.certificates([signer.cert])
            response = builder.sign(signer.key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)

    def index_line(self, issued: Issued, revoked: bool = False) -> str:
        """`issued`'s line in an `openssl ca` index.txt, which `openssl ocsp -index` answers
        from: V (valid) or R (revoked, since yesterday)."""
        expiry = issued.cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        revoked_at = (_now() - _DAY).strftime("%y%m%d%H%M%SZ") if revoked else ""
        serial = f"{issued.cert.serial_number:X}"
        serial = "0" * (len(serial) % 2) + serial
        subject = "/" + "/".join(
            f"{a.rfc4514_attribute_name}={a.value}" for a in issued.cert.subject
        )
        return "\t".join(("R" if revoked else "V", expiry, revoked_at, serial, "unknown", subject))

    def expired(self, names: list[str]) -> Issued:
        return self.issue(names, not_before=_now() - 30 * _DAY, not_after=_now() - _DAY)

    def not_yet_valid(self, names: list[str]) -> Issued:
        return self.issue(names, not_before=_now() + _DAY, not_after=_now() + 30 * _DAY)


def self_signed(names: list[str]) -> Issued:
    """A certificate for `names` signed by its own key: trusted by nobody."""
    ca = TestCA(names[0])
    issued = ca.issue(names)
    return issued
