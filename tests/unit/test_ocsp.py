"""OCSP stapling's decisions (proxyd.ocsp): the responder a certificate names, the request,
which responses may be stapled, and when the next fetch is."""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxyd import ocsp
from proxyd.config.model import Certificate
from tests.certs import Issued, TestCA

URL = "http://127.0.0.1:8888/"
HOUR = 3600.0
DAY = 86400.0


def certificate(issued: Issued, *chain: TestCA) -> Certificate:
    return Certificate(
        "site.pem", "site.pem", (issued.cert, *(ca.cert for ca in chain)), issued.key, ()
    )


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def site(ca: TestCA) -> Issued:
    return ca.issue(["a.test"], ocsp_url=URL)


@pytest.fixture
def target(ca: TestCA, site: Issued) -> ocsp.Target:
    found = ocsp.target(certificate(site, ca))
    assert found is not None
    return found


def at(moment: datetime.datetime) -> float:
    return moment.timestamp()


# What to staple for a certificate.


def test_responder_url_is_the_certificates_ocsp_access_location(site: Issued) -> None:
    assert ocsp.responder_url(site.cert) == URL


def test_a_certificate_without_a_responder_has_no_target(ca: TestCA) -> None:
    plain = ca.issue(["a.test"])
    assert ocsp.responder_url(plain.cert) is None
    assert ocsp.target(certificate(plain, ca)) is None


def test_a_configured_responder_replaces_the_certificates(ca: TestCA) -> None:
    plain = ca.issue(["a.test"])
    found = ocsp.target(certificate(plain, ca), "http://ocsp.test/")
    assert found is not None and found.url == "http://ocsp.test/"


def test_a_certificate_with_a_responder_needs_its_issuer_after_it(ca: TestCA, site: Issued) -> None:
    with pytest.raises(ocsp.OcspError, match="no issuer certificate after it"):
        ocsp.target(certificate(site))
    with pytest.raises(ocsp.OcspError, match="not its issuer"):
        ocsp.target(certificate(site, TestCA("another CA")))


def test_must_staple_is_the_tls_feature_status_request(ca: TestCA, site: Issued) -> None:
    assert not ocsp.must_staple(site.cert)
    assert ocsp.must_staple(ca.issue(["a.test"], ocsp_url=URL, must_staple=True).cert)


def test_the_request_asks_about_the_leaf_of_its_issuer_with_sha1(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    request = x509_ocsp.load_der_ocsp_request(target.request())
    assert request.serial_number == site.cert.serial_number
    assert isinstance(request.hash_algorithm, hashes.SHA1)
    expected = x509_ocsp.OCSPRequestBuilder().add_certificate(site.cert, ca.cert, hashes.SHA1())
    assert request.issuer_key_hash == expected.build().issuer_key_hash
    assert list(request.extensions) == []  # no nonce: cached answers serve


def test_the_same_certificate_issuer_and_responder_keep_the_same_key(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    again = ocsp.target(certificate(site, ca))
    assert again is not None and again.key == target.key
    other = ocsp.target(certificate(site, ca), "http://other.test/")
    assert other is not None and other.key != target.key


# Which responses may be stapled.


def test_a_good_response_signed_by_the_issuer_is_stapled(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    der = ca.ocsp_response(site, this_update=now, next_update=now + datetime.timedelta(days=4))
    staple = ocsp.check(der, target, at(now))
    assert staple.der == der
    assert staple.this_update == pytest.approx(at(now), abs=1)
    assert staple.next_update == pytest.approx(at(now) + 4 * DAY, abs=1)


def test_a_response_from_a_delegated_responder_is_stapled(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    responder = ca.issue(["ocsp.test"], usage=ExtendedKeyUsageOID.OCSP_SIGNING)
    der = ca.ocsp_response(site, signer=responder)
    assert ocsp.check(der, target, time.time()).der == der


def test_a_responder_without_ocsp_signing_is_not_trusted(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    responder = ca.issue(["ocsp.test"])  # serverAuth only
    der = ca.ocsp_response(site, signer=responder)
    with pytest.raises(ocsp.OcspError, match="not signed by the issuer"):
        ocsp.check(der, target, time.time())


def test_a_responder_of_another_ca_is_not_trusted(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    other = TestCA("another CA")
    responder = other.issue(["ocsp.test"], usage=ExtendedKeyUsageOID.OCSP_SIGNING)
    der = ca.ocsp_response(site, signer=responder)
    with pytest.raises(ocsp.OcspError, match="not signed by the issuer"):
        ocsp.check(der, target, time.time())


def test_a_response_signed_by_another_key_is_refused(site: Issued, target: ocsp.Target) -> None:
    impostor = TestCA("proxyd test CA")  # the same name, another key
    der = impostor.ocsp_response(site)
    with pytest.raises(ocsp.OcspError):
        ocsp.check(der, target, time.time())


def test_a_revoked_certificate_is_not_stapled(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    der = ca.ocsp_response(site, x509_ocsp.OCSPCertStatus.REVOKED)
    with pytest.raises(ocsp.OcspRevoked, match="revoked \\(key_compromise\\)"):
        ocsp.check(der, target, time.time())


def test_an_unknown_certificate_is_not_stapled(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    der = ca.ocsp_response(site, x509_ocsp.OCSPCertStatus.UNKNOWN)
    with pytest.raises(ocsp.OcspRevoked, match="does not know"):
        ocsp.check(der, target, time.time())


def test_a_response_about_another_certificate_is_refused(ca: TestCA, target: ocsp.Target) -> None:
    other = ca.issue(["b.test"], ocsp_url=URL)
    with pytest.raises(ocsp.OcspError, match="no answer for this certificate"):
        ocsp.check(ca.ocsp_response(other), target, time.time())


def test_an_unsuccessful_response_is_refused(target: ocsp.Target) -> None:
    der = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
        x509_ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ocsp.OcspError, match="status try_later"):
        ocsp.check(der, target, time.time())


def test_garbage_is_not_a_response(target: ocsp.Target) -> None:
    with pytest.raises(ocsp.OcspError, match="not an OCSP response"):
        ocsp.check(b"<html>busy</html>", target, time.time())


def test_an_expired_response_is_refused(ca: TestCA, site: Issued, target: ocsp.Target) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = now - datetime.timedelta(days=8)
    der = ca.ocsp_response(site, this_update=old, next_update=now - datetime.timedelta(hours=1))
    with pytest.raises(ocsp.OcspError, match="out of date"):
        ocsp.check(der, target, at(now))


def test_a_response_from_the_future_is_refused_beyond_the_clock_skew(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    soon = ca.ocsp_response(site, this_update=now + datetime.timedelta(minutes=2))
    assert ocsp.check(soon, target, at(now))
    later = ca.ocsp_response(site, this_update=now + datetime.timedelta(hours=1))
    with pytest.raises(ocsp.OcspError, match="in the future"):
        ocsp.check(later, target, at(now))


def test_a_response_without_next_update_serves_a_day_after_this_update(
    ca: TestCA, site: Issued, target: ocsp.Target
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    der = ca.ocsp_response(site, this_update=now, lifetime=None)
    staple = ocsp.check(der, target, at(now))
    assert staple.next_update is None
    assert ocsp.expires_at(staple) == pytest.approx(at(now) + DAY, abs=1)
    with pytest.raises(ocsp.OcspError, match="out of date"):
        ocsp.check(der, target, at(now) + DAY + 1)


# When to fetch again.


def test_refresh_halfway_through_a_long_response() -> None:
    staple = ocsp.Staple(b"", 1000.0, 1000.0 + 12 * HOUR)
    assert ocsp.refresh_at(staple, 1000.0) == 1000.0 + 6 * HOUR


def test_refresh_an_hour_before_next_update_when_that_comes_first() -> None:
    staple = ocsp.Staple(b"", 1000.0, 1000.0 + 90 * 60)
    assert ocsp.refresh_at(staple, 1000.0) == 1000.0 + 30 * 60


def test_refresh_at_least_daily_and_not_before_a_minute() -> None:
    week = ocsp.Staple(b"", 1000.0, 1000.0 + 7 * DAY)
    assert ocsp.refresh_at(week, 1000.0) == 1000.0 + DAY
    short = ocsp.Staple(b"", 1000.0, 1000.0 + 10 * 60)
    assert ocsp.refresh_at(short, 1000.0) == 1000.0 + 60


def test_refresh_hourly_without_next_update() -> None:
    staple = ocsp.Staple(b"", 1000.0, None)
    assert ocsp.refresh_at(staple, 5000.0) == 5000.0 + HOUR


def test_retries_back_off_from_a_minute_to_an_hour() -> None:
    assert [ocsp.retry_delay(n) for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
