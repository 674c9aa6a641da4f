"""OCSP stapling's decisions, without I/O (RFC 6960, RFC 6066 8): which responder a
certificate names, the request to send it, whether an answer may be stapled, and when to
fetch the next one. proxyd.ocsp_stapling does the fetching and the timers.

Only a response that says `good` is stapled, as nginx and Caddy do: a `revoked` or `unknown`
one is refused (and drops the staple held before), since RFC 6066 leaves the choice to the
server and a server that staples what it has not checked helps nobody.
"""

from __future__ import annotations

import datetime

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from proxyd.config.model import Certificate

__all__ = [
    "OcspError",
    "OcspRevoked",
    "Staple",
    "Target",
    "check",
    "expires_at",
    "must_staple",
    "refresh_at",
    "responder_url",
    "retry_delay",
    "target",
]

CLOCK_SKEW = 300.0
"""A thisUpdate up to this far in the future is taken (the responder's clock may run ahead)."""
NO_NEXT_UPDATE_LIFETIME = 86400.0
"""How long a response without nextUpdate is used after its thisUpdate (as Firefox's
mozilla::pkix: a day)."""
REFRESH_BEFORE = 3600.0
"""A response is refetched at least this long before its nextUpdate."""
MIN_REFRESH = 60.0
MAX_REFRESH = 86400.0
"""A good response is refetched at least daily: a revocation reaches the staple within a day."""
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0


class OcspError(Exception):
    """An OCSP response that cannot be stapled, or a certificate that cannot be; str() says
    why in a few words."""


class OcspRevoked(OcspError):
    """The responder says the certificate is revoked (or unknown to it): what was stapled
    before must not be stapled any more."""


@attrs.frozen
class Target:
    """A certificate to staple: its leaf, the leaf's issuer, and the responder to ask."""

    path: str
    """The certificate's file, for log lines."""
    leaf: x509.Certificate
    issuer: x509.Certificate
    url: str

    @property
    def key(self) -> tuple[bytes, bytes, str]:
        """What identifies the target across reloads: the same certificate from the same
        issuer asked of the same responder keeps its response."""
        return (
            self.leaf.fingerprint(hashes.SHA256()),
            self.issuer.fingerprint(hashes.SHA256()),
            self.url,
        )

    def request(self) -> bytes:
        """The DER OCSP request for the leaf. SHA-1 CertID: RFC 5019 2.1.1 makes it what
        every responder understands; no nonce, so that cached answers (RFC 5019) serve."""
        builder = ocsp.OCSPRequestBuilder().add_certificate(self.leaf, self.issuer, hashes.SHA1())
        return builder.build().public_bytes(serialization.Encoding.DER)


def responder_url(leaf: x509.Certificate) -> str | None:
    """The first http:// OCSP responder of the leaf's Authority Information Access."""
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in aia:
        location = description.access_location
        if (
            description.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(location, x509.UniformResourceIdentifier)
            and location.value.lower().startswith("http://")
        ):
            return location.value
    return None


def must_staple(leaf: x509.Certificate) -> bool:
    """The leaf has the TLS Feature status_request (RFC 7633, "OCSP must-staple"): clients
    that honour it refuse a handshake without a staple."""
    try:
        features = leaf.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return x509.TLSFeatureType.status_request in features


def target(certificate: Certificate, responder: str | None = None) -> Target | None:
    """What to staple for `certificate`: None when it names no responder (and none is
    configured). OcspError when it names one but its file has no issuer after the leaf."""
    url = responder or responder_url(certificate.leaf)
    if url is None:
        return None
    if len(certificate.chain) < 2:
        raise OcspError("its file has no issuer certificate after it")
    issuer = certificate.chain[1]
    if issuer.subject != certificate.leaf.issuer:
        raise OcspError("the certificate after it in its file is not its issuer")
    return Target(certificate.path, certificate.leaf, issuer, url)


@attrs.frozen
class Staple:
    """A checked response, ready to staple."""

    der: bytes
    this_update: float
    next_update: float | None
    """POSIX times; next_update None when the responder gave none."""


def check(der: bytes, wanted: Target, now: float) -> Staple:
    """`der` as a Staple if it may be stapled for `wanted` at `now`: a successful response,
    signed by the issuer or by a responder the issuer delegated to (RFC 6960 4.2.2.2), for
    this certificate, `good`, current. OcspRevoked or OcspError says why not."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise OcspError("not an OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"status {response.response_status.name.lower()}")
    single = _single(response, wanted)
    _check_signature(response, wanted.issuer, now)
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        why = f" ({reason.name})" if reason is not None else ""
        raise OcspRevoked(f"the certificate is revoked{why}")
    if status != ocsp.OCSPCertStatus.GOOD:
        raise OcspRevoked("the responder does not know the certificate")
    this_update = single.this_update_utc.timestamp()
    next_utc = single.next_update_utc
    next_update = next_utc.timestamp() if next_utc is not None else None
    if this_update > now + CLOCK_SKEW:
        raise OcspError("thisUpdate is in the future")
    if next_update is not None and next_update < this_update:
        raise OcspError("nextUpdate is before thisUpdate")
    staple = Staple(der, this_update, next_update)
    if expires_at(staple) <= now:
        raise OcspError("the response is out of date")
    return staple


def _single(response: ocsp.OCSPResponse, wanted: Target) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        if single.serial_number != wanted.leaf.serial_number:
            continue
        try:
            # The same CertID hashes, made with the hash the responder used.
            ours = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(wanted.leaf, wanted.issuer, single.hash_algorithm)
                .build()
            )
        except (ValueError, UnsupportedAlgorithm):
            continue
        if (
            ours.issuer_key_hash == single.issuer_key_hash
            and ours.issuer_name_hash == single.issuer_name_hash
        ):
            return single
    raise OcspError("no answer for this certificate in the response")


def _check_signature(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: float) -> None:
    if _signed_by(response, issuer):
        return
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    for responder in response.certificates:
        if _delegated(responder, issuer, moment) and _signed_by(response, responder):
            return
    raise OcspError("not signed by the issuer nor by a responder it delegated to")


def _delegated(
    responder: x509.Certificate, issuer: x509.Certificate, moment: datetime.datetime
) -> bool:
    """RFC 6960 4.2.2.2: issued directly by the issuer, with id-kp-OCSPSigning, valid now."""
    try:
        responder.verify_directly_issued_by(issuer)
        usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        ExtendedKeyUsageOID.OCSP_SIGNING in usage
        and responder.not_valid_before_utc <= moment <= responder.not_valid_after_utc
    )


def _signed_by(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    key = signer.public_key()
    signature, data = response.signature, response.tbs_response_bytes
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def expires_at(staple: Staple) -> float:
    """When the staple stops being served: its nextUpdate, else a day after thisUpdate."""
    if staple.next_update is not None:
        return staple.next_update
    return staple.this_update + NO_NEXT_UPDATE_LIFETIME


def refresh_at(staple: Staple, now: float) -> float:
    """When to fetch the next response: halfway through this one's validity or an hour
    before nextUpdate, whichever comes first, and within a day; an hour from now for a
    response without nextUpdate. Never sooner than a minute from now."""
    if staple.next_update is None:
        at = now + REFRESH_BEFORE
    else:
        halfway = staple.this_update + (staple.next_update - staple.this_update) / 2
        at = min(halfway, staple.next_update - REFRESH_BEFORE)
    return max(now + MIN_REFRESH, min(at, now + MAX_REFRESH))


def retry_delay(failures: int) -> float:
    """After `failures` failed fetches in a row: 1 minute, doubled each time, up to an hour."""
    return min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, failures - 1))
