"""TLS configuration: certificates read and checked at load, the TLS keys of [https], [tcp]
and [pool], and the warnings that do not stop proxyd. Every error names file, line, section
and key, what was expected and what was found."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.cli import main, tls_warnings
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import (
    DEFAULT_CIPHERS,
    DEFAULT_CIPHERSUITES,
    Config,
    HttpCheck,
    SniRoute,
    TlsCheck,
    TlsClientConfig,
    TlsServerConfig,
)
from tests.certs import Issued, TestCA, key_pem

POOL = "[pool web]\nservers = 127.0.0.1:9001\n"
"""Lines 1 and 2."""


def https(certificates: str = "site.pem", extra: str = "") -> str:
    """POOL, `[https h]` on line 3, `certificates` on line 5 (its value's further lines from
    6), then the routes and `extra` (on line 8 when `certificates` is one line)."""
    return (
        POOL
        + f"[https h]\nlisten = tcp:8443\ncertificates = {certificates}\n"
        + "routes =\n    path / -> pool web\n"
        + extra
    )


def tcp(extra: str) -> str:
    """POOL, `[tcp t]` on line 3, `listen` on 4, `extra` from line 5."""
    return POOL + "[tcp t]\nlisten = tcp:465\n" + extra


def pool(extra: str) -> str:
    """`[pool web]` on line 1, `servers` on 2, `extra` from line 3."""
    return "[pool web]\nservers = 10.0.0.5:443\n" + extra


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "proxyd.ini").write_text(text)
    return loads(text, str(tmp_path / "proxyd.ini"))


def relative(tmp_path: Path, text: str) -> str:
    return text.replace(str(tmp_path) + "/", "")


def errors(tmp_path: Path, text: str) -> list[str]:
    """The messages of loading `text` as tmp_path/proxyd.ini, paths relative to tmp_path."""
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path, text)
    return [relative(tmp_path, str(e)) for e in info.value.errors]


def server_tls(tmp_path: Path, text: str) -> TlsServerConfig:
    config = load(tmp_path, text)
    tls = config.http[0].tls if config.http else config.tcp[0].tls
    assert tls is not None
    return tls


def warnings(tmp_path: Path, text: str, now: datetime.datetime | None = None) -> list[str]:
    return [relative(tmp_path, w) for w in tls_warnings(load(tmp_path, text), now)]


def minute(when: datetime.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def site(tmp_path: Path, ca: TestCA) -> Issued:
    """A good certificate for a.test, with its key, in site.pem."""
    issued = ca.issue(["a.test"])
    issued.write(tmp_path / "site.pem")
    return issued


# Certificates that load.


def test_a_combined_pem_loads_with_its_names_and_the_default_tls_settings(
    tmp_path: Path, ca: TestCA
) -> None:
    issued = ca.issue(["A.test", "*.b.test", "10.0.0.1"])
    issued.write(tmp_path / "site.pem")
    tls = server_tls(tmp_path, https())
    [certificate] = tls.loaded
    assert certificate.names == ("a.test", "*.b.test", "10.0.0.1")
    assert certificate.leaf == issued.cert
    assert certificate.path == certificate.key_path == str(tmp_path / "site.pem")
    assert tls.protocols == ("TLSv1.2", "TLSv1.3")
    assert tls.ciphers == DEFAULT_CIPHERS and tls.ciphersuites == DEFAULT_CIPHERSUITES
    assert (tls.verify_client, tls.client_ca, tls.expired_certificates) == ("off", None, "warn")
    assert (tls.ocsp_stapling, tls.ocsp_responder) == (True, None)


def test_ocsp_keys_are_read(tmp_path: Path, site: Issued) -> None:
    tls = server_tls(
        tmp_path, https(extra="ocsp_stapling = off\nocsp_responder = http://ocsp.test:8080/x\n")
    )
    assert (tls.ocsp_stapling, tls.ocsp_responder) == (False, "http://ocsp.test:8080/x")


def test_a_certificate_without_subject_alt_names_serves_its_common_name(
    tmp_path: Path, ca: TestCA
) -> None:
    ca.issue(["Old.test"], san=False).write(tmp_path / "site.pem")
    assert server_tls(tmp_path, https()).loaded[0].names == ("old.test",)


def test_the_key_beside_the_certificate_as_name_key_is_used(tmp_path: Path, ca: TestCA) -> None:
    issued = ca.issue(["a.test"])
    issued.write(tmp_path / "site.crt", with_key=False)
    issued.write_key(tmp_path / "site.key")
    [certificate] = server_tls(tmp_path, https("site.crt")).loaded
    assert certificate.key_path == str(tmp_path / "site.key")


def test_a_key_given_by_key_wins_over_the_one_beside(tmp_path: Path, ca: TestCA) -> None:
    issued = ca.issue(["a.test"])
    issued.write(tmp_path / "site.crt", with_key=False)
    ca.issue(["other.test"]).write_key(tmp_path / "site.key")  # would not match
    issued.write_key(tmp_path / "right.key")
    [certificate] = server_tls(tmp_path, https("site.crt key=right.key")).loaded
    assert certificate.key_path == str(tmp_path / "right.key")


def test_a_directory_loads_its_combined_pems_in_name_order_the_first_the_default(
    tmp_path: Path, ca: TestCA
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue(["b.test"]).write(certs / "2-b.pem")
    ca.issue(["a.test"]).write(certs / "1-a.pem")
    ca.issue(["c.test"]).write(certs / "10-c.pem")
    separate = ca.issue(["d.test"])
    separate.write(certs / "3-d.crt", with_key=False)
    separate.write_key(certs / "3-d.key")
    separate.write_key(certs / "4-key-only.pem")  # a key kept as .pem: not a certificate
    (certs / "notes.txt").write_text("not a certificate")
    (certs / "sub.pem").mkdir()
    tls = server_tls(tmp_path, https("certs/"))
    assert [c.names for c in tls.loaded] == [("a.test",), ("c.test",), ("b.test",), ("d.test",)]
    assert tls.loaded[3].key_path == str(certs / "3-d.key")


def test_several_certificate_lines_load_in_their_order(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["z.test"]).write(tmp_path / "z.pem")
    ca.issue(["a.test"]).write(tmp_path / "a.pem")
    tls = server_tls(tmp_path, https("\n    z.pem\n    a.pem"))
    assert [c.names for c in tls.loaded] == [("z.test",), ("a.test",)]


def test_every_tls_key_of_https_is_read(tmp_path: Path, ca: TestCA, site: Issued) -> None:
    ca.write_ca(tmp_path / "clients.pem")
    tls = server_tls(
        tmp_path,
        https(
            extra="tls_protocols = TLSv1.3 TLSv1.2\n"
            "tls_ciphers = ECDHE+AESGCM\n"
            "tls_ciphersuites = TLS_AES_256_GCM_SHA384\n"
            "tls_prefer_server_ciphers = off\n"
            "tls_session_tickets = off\n"
            "tls_session_cache = off\n"
            "tls_session_timeout = 1m\n"
            "tls_verify_client = optional\n"
            "tls_client_ca = clients.pem\n"
            "expired_certificates = refuse\n"
        ),
    )
    assert tls.protocols == ("TLSv1.2", "TLSv1.3")
    assert (tls.ciphers, tls.ciphersuites) == ("ECDHE+AESGCM", "TLS_AES_256_GCM_SHA384")
    assert not (tls.prefer_server_ciphers or tls.session_tickets or tls.session_cache)
    assert tls.session_timeout == 60.0
    assert (tls.verify_client, tls.client_ca) == ("optional", str(tmp_path / "clients.pem"))
    assert tls.expired_certificates == "refuse"


# Certificates that do not load.


def test_a_missing_certificate_file_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, https("nope.pem")) == [
        "proxyd.ini:5: [https h] certificates: expected a readable file; "
        "found 'nope.pem' (No such file or directory)"
    ]


def test_each_bad_line_of_certificates_is_reported_on_its_own_line(
    tmp_path: Path, site: Issued
) -> None:
    assert errors(tmp_path, https("\n    nope.pem\n    site.pem\n    gone.pem")) == [
        "proxyd.ini:6: [https h] certificates: expected a readable file; "
        "found 'nope.pem' (No such file or directory)",
        "proxyd.ini:8: [https h] certificates: expected a readable file; "
        "found 'gone.pem' (No such file or directory)",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_certificate_file_is_an_error(tmp_path: Path, site: Issued) -> None:
    (tmp_path / "site.pem").chmod(0)
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected a readable file; "
        "found 'site.pem' (Permission denied)"
    ]


def test_a_certificate_path_through_a_file_is_an_error(tmp_path: Path, site: Issued) -> None:
    assert errors(tmp_path, https("site.pem/x.pem")) == [
        "proxyd.ini:5: [https h] certificates: expected a readable file; "
        "found 'site.pem/x.pem' (Not a directory)"
    ]


def test_a_file_larger_than_1_mib_is_not_read_as_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "big.pem").write_bytes(b"x" * ((1 << 20) + 1))
    assert errors(tmp_path, https("big.pem")) == [
        "proxyd.ini:5: [https h] certificates: expected a PEM file of at most 1 MiB; "
        "found a larger file 'big.pem'"
    ]


def test_a_file_without_a_certificate_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "site.pem").write_text("hello\n")
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected a PEM certificate; found none in 'site.pem'"
    ]


def test_a_broken_certificate_block_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "site.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    [error] = errors(tmp_path, https())
    assert error.startswith(
        "proxyd.ini:5: [https h] certificates: expected PEM certificates; "
        "found a broken certificate in 'site.pem' ("
    )


@pytest.mark.parametrize("files", [[], ["notes.txt"], ["key.pem"]])
def test_a_directory_without_certificates_is_an_error(
    tmp_path: Path, ca: TestCA, files: list[str]
) -> None:
    (tmp_path / "certs").mkdir()
    for name in files:
        if name == "key.pem":
            ca.issue(["a.test"]).write_key(tmp_path / "certs" / name)
        else:
            (tmp_path / "certs" / name).write_text("text")
    assert errors(tmp_path, https("certs")) == [
        "proxyd.ini:5: [https h] certificates: expected a directory holding certificates "
        "(*.pem, *.crt); found none in 'certs'"
    ]


def test_a_bad_certificate_in_a_directory_is_an_error_naming_the_file(
    tmp_path: Path, ca: TestCA
) -> None:
    (tmp_path / "certs").mkdir()
    ca.issue(["a.test"]).write(tmp_path / "certs" / "a.pem")
    ca.issue(["b.test"]).write(tmp_path / "certs" / "b.pem", with_key=False)
    assert errors(tmp_path, https("certs")) == [
        "proxyd.ini:5: [https h] certificates: expected a private key in the certificate's "
        "file, beside it as NAME.key, or key=; found none for 'certs/b.pem'"
    ]


def test_a_certificate_without_a_key_nor_name_key_is_an_error(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem", with_key=False)
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected a private key in the certificate's "
        "file, beside it as NAME.key, or key=; found none for 'site.pem'"
    ]


def test_a_missing_key_file_named_by_key_is_an_error(tmp_path: Path, site: Issued) -> None:
    assert errors(tmp_path, https("site.pem key=nope.key")) == [
        "proxyd.ini:5: [https h] certificates: expected a readable file; "
        "found 'nope.key' (No such file or directory)"
    ]


def test_a_key_file_without_a_key_is_an_error(tmp_path: Path, site: Issued) -> None:
    (tmp_path / "other.key").write_text("nothing\n")
    assert errors(tmp_path, https("site.pem key=other.key")) == [
        "proxyd.ini:5: [https h] certificates: expected a PEM private key; "
        "found none in 'other.key'"
    ]


def test_two_keys_in_the_certificate_file_are_an_error(tmp_path: Path, ca: TestCA) -> None:
    issued = ca.issue(["a.test"])
    (tmp_path / "site.pem").write_bytes(issued.pem() + key_pem(issued.key))
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected one private key; found 2 in 'site.pem'"
    ]


@pytest.mark.parametrize("given", ["beside", "key="])
def test_a_key_that_does_not_match_its_certificate_is_an_error(
    tmp_path: Path, ca: TestCA, given: str
) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.crt", with_key=False)
    ca.issue(["b.test"]).write_key(tmp_path / "site.key")
    value = "site.crt" if given == "beside" else "site.crt key=site.key"
    assert errors(tmp_path, https(value)) == [
        "proxyd.ini:5: [https h] certificates: expected the private key of the certificate; "
        "found a key in 'site.key' that does not match 'site.crt'"
    ]


@pytest.mark.parametrize(
    "key_format",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
)
def test_an_encrypted_key_is_an_error(
    tmp_path: Path, ca: TestCA, key_format: serialization.PrivateFormat
) -> None:
    issued = ca.issue(["a.test"])
    encrypted = issued.key.private_bytes(
        serialization.Encoding.PEM, key_format, serialization.BestAvailableEncryption(b"secret")
    )
    (tmp_path / "site.pem").write_bytes(issued.pem(with_key=False) + encrypted)
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected an unencrypted private key; "
        "found an encrypted key in 'site.pem'"
    ]


def test_a_certificate_not_yet_valid_is_an_error(tmp_path: Path, ca: TestCA) -> None:
    issued = ca.not_yet_valid(["a.test"])
    issued.write(tmp_path / "site.pem")
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected a certificate valid now; "
        f"found 'site.pem' not valid before {minute(issued.cert.not_valid_before_utc)}"
    ]


def test_an_expired_certificate_loads_by_default_and_is_warned_about_loudly(
    tmp_path: Path, ca: TestCA
) -> None:
    issued = ca.expired(["a.test"])
    issued.write(tmp_path / "site.pem")
    assert server_tls(tmp_path, https()).expired_certificates == "warn"
    assert warnings(tmp_path, https()) == [
        f"proxyd.ini: [https h] certificates: site.pem EXPIRED on "
        f"{minute(issued.cert.not_valid_after_utc)}; clients will refuse it "
        "(expired_certificates = refuse stops proxyd instead)"
    ]


def test_proxyd_check_accepts_an_expired_certificate_and_prints_the_warning(
    tmp_path: Path, ca: TestCA, capsys: pytest.CaptureFixture[str]
) -> None:
    ca.expired(["a.test"]).write(tmp_path / "site.pem")
    load(tmp_path, https())
    assert main(["check", str(tmp_path / "proxyd.ini")]) == 0
    captured = capsys.readouterr()
    assert "[https h] certificates: " in captured.err and " EXPIRED on " in captured.err
    assert captured.out.endswith(": ok (1 pools, 0 tcp listeners, 1 http listeners)\n")


def test_an_expired_certificate_is_an_error_with_expired_certificates_refuse(
    tmp_path: Path, ca: TestCA
) -> None:
    issued = ca.expired(["a.test"])
    issued.write(tmp_path / "site.pem")
    assert errors(tmp_path, https(extra="expired_certificates = refuse\n")) == [
        "proxyd.ini:5: [https h] certificates: expected certificates valid now "
        f"(expired_certificates = refuse); found 'site.pem' expired "
        f"{minute(issued.cert.not_valid_after_utc)}"
    ]


def test_a_certificate_expiring_within_14_days_is_warned_about(tmp_path: Path, ca: TestCA) -> None:
    now = datetime.datetime.now(datetime.UTC)
    soon = ca.issue(["a.test"], not_after=now + datetime.timedelta(days=13))
    soon.write(tmp_path / "site.pem")
    assert warnings(tmp_path, https(), now) == [
        f"proxyd.ini: [https h] certificates: site.pem expires on "
        f"{minute(soon.cert.not_valid_after_utc)}"
    ]
    ca.issue(["a.test"], not_after=now + datetime.timedelta(days=15)).write(tmp_path / "site.pem")
    assert warnings(tmp_path, https(), now) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "site.pem other.pem",
            "proxyd.ini:5: [https h] certificates: expected PATH [key=KEYFILE], a PEM file or "
            "a directory; found 'site.pem other.pem'",
        ),
        (
            "certs key=site.key",
            "proxyd.ini:5: [https h] certificates: expected key= only after a certificate file; "
            "found a directory 'certs'",
        ),
        (
            "",
            "proxyd.ini:5: [https h] certificates: expected PEM files or directories, one a "
            "line; found nothing",
        ),
    ],
)
def test_a_malformed_certificates_value_is_an_error(
    tmp_path: Path, value: str, message: str
) -> None:
    (tmp_path / "certs").mkdir()
    assert errors(tmp_path, https(value)) == [message]


def test_certificates_is_required_on_https(tmp_path: Path) -> None:
    text = POOL + "[https h]\nlisten = tcp:8443\nroutes = path / -> pool web\n"
    assert errors(tmp_path, text) == [
        "proxyd.ini:3: [https h] certificates: expected a 'certificates' or an 'acme' key;"
        " found none"
    ]


# The other TLS keys of a listener.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("TLSv1.2", ("TLSv1.2",)),
        ("TLSv1.3", ("TLSv1.3",)),
        ("TLSv1.3 TLSv1.2", ("TLSv1.2", "TLSv1.3")),
    ],
)
def test_tls_protocols_are_kept_in_version_order(
    tmp_path: Path, site: Issued, value: str, expected: tuple[str, ...]
) -> None:
    assert server_tls(tmp_path, https(extra=f"tls_protocols = {value}\n")).protocols == expected


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        ("tls_protocols", "TLSv1.1", "'TLSv1.1' (TLS 1.0 and 1.1 are obsolete (RFC 8996))"),
        (
            "tls_protocols",
            "TLSv1.1 TLSv1.2",
            "'TLSv1.1' (TLS 1.0 and 1.1 are obsolete (RFC 8996))",
        ),
        ("tls_protocols", "TLSv1", "'TLSv1' (TLS 1.0 and 1.1 are obsolete (RFC 8996))"),
        ("tls_protocols", "SSLv3", "'SSLv3' (TLS 1.0 and 1.1 are obsolete (RFC 8996))"),
        ("tls_protocols", "TLSv1.4", "'TLSv1.4'"),
        ("tls_protocols", "tlsv1.2", "'tlsv1.2'"),
    ],
)
def test_tls_protocols_other_than_1_2_and_1_3_are_errors(
    tmp_path: Path, site: Issued, key: str, value: str, found: str
) -> None:
    assert errors(tmp_path, https(extra=f"{key} = {value}\n")) == [
        f"proxyd.ini:8: [https h] {key}: expected TLSv1.2, TLSv1.3 or both; found {found}"
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("tls_ciphers", "NOTHING-KNOWN", "an OpenSSL cipher list such as ECDHE+AESGCM"),
        ("tls_ciphers", "TLS_AES_128_GCM_SHA256", "an OpenSSL cipher list such as ECDHE+AESGCM"),
        ("tls_ciphers", "", "an OpenSSL cipher list such as ECDHE+AESGCM"),
        (
            "tls_ciphersuites",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS 1.3 cipher suites such as TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ),
        (
            "tls_ciphersuites",
            "NOPE",
            "TLS 1.3 cipher suites such as TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ),
    ],
)
def test_cipher_lists_openssl_matches_nothing_of_are_errors(
    tmp_path: Path, site: Issued, key: str, value: str, expected: str
) -> None:
    assert errors(tmp_path, https(extra=f"{key} = {value}\n")) == [
        f"proxyd.ini:8: [https h] {key}: expected {expected}; found '{value}' "
        "(OpenSSL matched no cipher)"
    ]


def test_an_empty_tls_ciphersuites_is_an_error(tmp_path: Path, site: Issued) -> None:
    [error] = errors(tmp_path, https(extra="tls_ciphersuites =\n"))
    assert error.startswith(
        "proxyd.ini:8: [https h] tls_ciphersuites: expected TLS 1.3 cipher suites such as "
    )


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_verifying_clients_without_tls_client_ca_is_an_error(
    tmp_path: Path, site: Issued, mode: str
) -> None:
    assert errors(tmp_path, https(extra=f"tls_verify_client = {mode}\n")) == [
        f"proxyd.ini:8: [https h] tls_verify_client: expected tls_client_ca, the CA bundle "
        f"client certificates are verified against; found tls_verify_client = {mode} "
        "without it"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "tls_verify_client = sometimes\n",
            "proxyd.ini:8: [https h] tls_verify_client: expected 'off', 'optional', "
            "'required'; found 'sometimes'",
        ),
        (
            "expired_certificates = ignore\n",
            "proxyd.ini:8: [https h] expired_certificates: expected 'warn', 'refuse'; "
            "found 'ignore'",
        ),
        (
            "tls_verify_client = required\ntls_client_ca = nope.pem\n",
            "proxyd.ini:9: [https h] tls_client_ca: expected a readable file; "
            "found 'nope.pem' (No such file or directory)",
        ),
        (
            "tls_verify_client = required\ntls_client_ca = proxyd.ini\n",
            "proxyd.ini:9: [https h] tls_client_ca: expected a PEM file of CA certificates; "
            "found no certificate in 'proxyd.ini'",
        ),
        (
            "tls_session_timeout = soon\n",
            "proxyd.ini:8: [https h] tls_session_timeout: expected a duration such as 500ms, "
            "2s, 1m, 1h, 1d; found 'soon'",
        ),
        (
            "tls_alpn = h2\n",
            "proxyd.ini:8: [https h] tls_alpn: expected a key of https sections; found 'tls_alpn'",
        ),
        (
            "ocsp_stapling = sometimes\n",
            "proxyd.ini:8: [https h] ocsp_stapling: expected on or off; found 'sometimes'",
        ),
        (
            "ocsp_responder = https://ocsp.test/\n",
            "proxyd.ini:8: [https h] ocsp_responder: expected an http:// URL such as "
            "http://ocsp.example.com/; found 'https://ocsp.test/'",
        ),
    ],
)
def test_bad_tls_keys_of_https_are_errors(
    tmp_path: Path, site: Issued, extra: str, message: str
) -> None:
    assert errors(tmp_path, https(extra=extra)) == [message]


# HSTS and the redirect to https.


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ("1y includeSubDomains preload", "max-age=31536000; includeSubDomains; preload"),
        ("2y", "max-age=63072000"),
        ("365d includesubdomains", "max-age=31536000; includeSubDomains"),
        ("300 preload", "max-age=300; preload"),
        ("off", None),
    ],
)
def test_hsts_becomes_the_header_value(
    tmp_path: Path, site: Issued, value: str, header: str | None
) -> None:
    assert load(tmp_path, https(extra=f"hsts = {value}\n")).http[0].hsts == header


def test_https_sends_no_hsts_unless_told(tmp_path: Path, site: Issued) -> None:
    assert load(tmp_path, https()).http[0].hsts is None


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("forever", "'forever'"),
        ("1y sometimes", "'sometimes'"),
        ("includeSubDomains", "'includeSubDomains'"),
        ("-1y", "'-1y'"),
        ("", "nothing"),
    ],
)
def test_bad_hsts_values_are_errors(tmp_path: Path, site: Issued, value: str, found: str) -> None:
    assert errors(tmp_path, https(extra=f"hsts = {value}\n")) == [
        "proxyd.ini:8: [https h] hsts: expected off, or a max-age such as 1y or 365d, then "
        f"includeSubDomains and/or preload; found {found}"
    ]


def test_an_hsts_flag_given_twice_is_an_error(tmp_path: Path, site: Issued) -> None:
    [error] = errors(tmp_path, https(extra="hsts = 1y preload preload\n"))
    assert error.startswith("proxyd.ini:8: [https h] hsts: expected ")


def test_hsts_is_only_a_key_of_https(tmp_path: Path) -> None:
    text = POOL + "[http h]\nlisten = tcp:80\nroutes = path / -> pool web\nhsts = 1y\n"
    assert errors(tmp_path, text) == [
        "proxyd.ini:6: [http h] hsts: expected a key of http sections; found 'hsts'"
    ]


def http(extra: str) -> str:
    """POOL, `[http h]` on line 3, `extra` on line 5."""
    return POOL + f"[http h]\nlisten = tcp:80\n{extra}routes = path / -> pool web\n"


@pytest.mark.parametrize(
    ("value", "port"),
    [("on", 443), ("yes", 443), ("off", None), ("no", None), ("8443", 8443), ("1", 1)],
)
def test_https_redirect_is_off_on_or_a_port(tmp_path: Path, value: str, port: int | None) -> None:
    assert load(tmp_path, http(f"https_redirect = {value}\n")).http[0].https_redirect == port


def test_http_does_not_redirect_unless_told(tmp_path: Path) -> None:
    assert load(tmp_path, http("")).http[0].https_redirect is None


@pytest.mark.parametrize("value", ["0", "65536"])
def test_an_https_redirect_port_out_of_range_is_an_error(tmp_path: Path, value: str) -> None:
    assert errors(tmp_path, http(f"https_redirect = {value}\n")) == [
        "proxyd.ini:5: [http h] https_redirect: expected off, on or a port from 1 to 65535; "
        f"found '{value}'"
    ]


def test_a_bad_https_redirect_word_names_off_and_on(tmp_path: Path) -> None:
    [error] = errors(tmp_path, http("https_redirect = sometimes\n"))
    assert error.startswith("proxyd.ini:5: [http h] https_redirect: expected ")
    assert re.search(r"expected .*\boff\b.*; found 'sometimes'", error)
    assert re.search(r"expected .*\bon\b.*; found 'sometimes'", error)


def test_https_redirect_is_only_a_key_of_http(tmp_path: Path, site: Issued) -> None:
    assert errors(tmp_path, https(extra="https_redirect = on\n")) == [
        "proxyd.ini:8: [https h] https_redirect: expected a key of https sections; "
        "found 'https_redirect'"
    ]


# [tcp]: TLS termination and SNI routing.


def test_a_tcp_listener_with_certificates_terminates_tls(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["mail.test"]).write(tmp_path / "site.pem")
    listener = load(
        tmp_path,
        tcp(
            "pool = web\ncertificates = site.pem\ntls_alpn = smtp h2\n"
            "tls_protocols = TLSv1.3\nhandshake_timeout = 5s\n"
        ),
    ).tcp[0]
    assert listener.tls is not None
    assert listener.tls.alpn == ("smtp", "h2") and listener.tls.protocols == ("TLSv1.3",)
    assert listener.tls.loaded[0].names == ("mail.test",)
    assert listener.pool == "web"


def test_a_tcp_listener_without_certificates_relays_plain_tcp(tmp_path: Path) -> None:
    listener = load(tmp_path, tcp("pool = web\n")).tcp[0]
    assert listener.tls is None and listener.route_by is None


@pytest.mark.parametrize(
    "key_value",
    [
        "tls_protocols = TLSv1.3",
        "tls_ciphers = ECDHE+AESGCM",
        "tls_ciphersuites = TLS_AES_128_GCM_SHA256",
        "tls_prefer_server_ciphers = on",
        "tls_session_tickets = off",
        "tls_session_cache = off",
        "tls_session_timeout = 1m",
        "tls_verify_client = off",
        "tls_alpn = h2",
        "expired_certificates = refuse",
        "ocsp_stapling = off",
        "ocsp_responder = http://ocsp.test/",
    ],
)
def test_tls_keys_on_a_tcp_listener_without_certificates_are_errors(
    tmp_path: Path, key_value: str
) -> None:
    key = key_value.split(" =")[0]
    assert errors(tmp_path, tcp(f"pool = web\n{key_value}\n")) == [
        f"proxyd.ini:6: [tcp t] {key}: expected '{key}' only with certificates or acme "
        "(TLS termination); found none"
    ]


def test_sni_passthrough_and_tls_termination_exclude_each_other(
    tmp_path: Path, site: Issued
) -> None:
    text = tcp("route_by = sni\nroutes = a.test -> pool web\ncertificates = site.pem\n")
    assert errors(tmp_path, text) == [
        "proxyd.ini:5: [tcp t] route_by: expected route_by = sni (passthrough) or "
        "certificates (termination), not both; found both"
    ]


def test_sni_routes_send_each_name_to_its_pool_and_need_no_pool(tmp_path: Path) -> None:
    text = (
        POOL
        + "[pool api]\nservers = 127.0.0.1:9002\n"
        + "[tcp t]\nlisten = tcp:443\nroute_by = sni\nroutes =\n"
        + "    A.test. -> pool web\n    *.API.test -> pool api\n"
    )
    listener = load(tmp_path, text).tcp[0]
    assert listener.route_by == "sni" and listener.pool is None and listener.tls is None
    assert listener.routes == (SniRoute("a.test", "web"), SniRoute("*.api.test", "api"))


def test_a_pool_beside_sni_routes_is_kept(tmp_path: Path) -> None:
    listener = load(tmp_path, tcp("route_by = sni\nroutes = a.test -> pool web\npool = web\n"))
    assert listener.tcp[0].pool == "web"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "route_by = sni\n",
            "proxyd.ini:3: [tcp t] routes: expected a 'routes' key with route_by = sni; found none",
        ),
        (
            "pool = web\nroutes =\n    a.test -> pool web\n",
            "proxyd.ini:7: [tcp t] routes: expected routes only with route_by = sni; "
            "found no route_by",
        ),
        (
            "route_by = host\nroutes = a.test -> pool web\n",
            "proxyd.ini:5: [tcp t] route_by: expected 'sni'; found 'host'",
        ),
        ("connect_timeout = 1s\n", "proxyd.ini:3: [tcp t] pool: expected a 'pool' key; found none"),
        (
            "route_by = sni\nroutes =\n",
            "proxyd.ini:6: [tcp t] routes: expected NAME -> pool POOL, NAME a server name or "
            "*.domain, one a line; found nothing",
        ),
    ],
)
def test_route_by_and_routes_are_checked_together(tmp_path: Path, extra: str, message: str) -> None:
    assert errors(tmp_path, tcp(extra)) == [message]


SNI_GRAMMAR = "NAME -> pool POOL, NAME a server name or *.domain"


@pytest.mark.parametrize(
    ("route", "found"),
    [
        ("a.test => web", "'a.test => web'"),
        ("a.test -> web", "'a.test -> web'"),
        ("a.test -> pool", "'a.test -> pool'"),
        ("a.test -> pool web extra", "'a.test -> pool web extra'"),
        ("a.test pool web", "'a.test pool web'"),
        ("*.*.test -> pool web", "'*.*.test'"),
        ("a.*.test -> pool web", "'a.*.test'"),
        ("* -> pool web", "'*'"),
        ("bad_name! -> pool web", "'bad_name!'"),
    ],
)
def test_sni_route_grammar_errors_name_the_line(tmp_path: Path, route: str, found: str) -> None:
    text = tcp(f"route_by = sni\nroutes =\n    ok.test -> pool web\n    {route}\n")
    assert errors(tmp_path, text) == [
        f"proxyd.ini:8: [tcp t] routes: expected {SNI_GRAMMAR}; found {found}"
    ]


def test_a_server_name_routed_twice_is_an_error(tmp_path: Path) -> None:
    text = tcp("route_by = sni\nroutes =\n    a.test -> pool web\n    A.TEST. -> pool web\n")
    assert errors(tmp_path, text) == [
        "proxyd.ini:8: [tcp t] routes: expected each name once; found 'a.test' twice"
    ]


@pytest.mark.parametrize(("name", "hint"), [("wbe", " (did you mean 'web'?)"), ("elsewhere", "")])
def test_an_sni_route_to_an_unknown_pool_is_an_error(tmp_path: Path, name: str, hint: str) -> None:
    text = tcp(f"route_by = sni\nroutes =\n    a.test -> pool web\n    b.test -> pool {name}\n")
    assert errors(tmp_path, text) == [
        f"proxyd.ini:8: [tcp t] routes: expected the name of a [pool] ('web'); found '{name}'{hint}"
    ]


def test_every_bad_sni_route_is_reported(tmp_path: Path) -> None:
    text = tcp("route_by = sni\nroutes =\n    a.test -> pool wbe\n    b.test -> web\n")
    assert errors(tmp_path, text) == [
        "proxyd.ini:7: [tcp t] routes: expected the name of a [pool] ('web'); found 'wbe' "
        "(did you mean 'web'?)",
        f"proxyd.ini:8: [tcp t] routes: expected {SNI_GRAMMAR}; found 'b.test -> web'",
    ]


def test_a_bad_tls_alpn_name_is_an_error(tmp_path: Path, site: Issued) -> None:
    long = "x" * 256
    text = tcp(f"pool = web\ncertificates = site.pem\ntls_alpn = h2 {long}\n")
    assert errors(tmp_path, text) == [
        "proxyd.ini:7: [tcp t] tls_alpn: expected ALPN protocol names such as h2 http/1.1; "
        f"found '{long}'"
    ]


def test_accept_proxy_with_tls_termination_is_accepted(tmp_path: Path, site: Issued) -> None:
    config = load(tmp_path, tcp("pool = web\ncertificates = site.pem\naccept_proxy = on\n"))
    assert config.tcp[0].accept_proxy and config.tcp[0].tls is not None


def test_a_tcp_certificate_error_names_the_tcp_section(tmp_path: Path) -> None:
    assert errors(tmp_path, tcp("pool = web\ncertificates = nope.pem\n")) == [
        "proxyd.ini:6: [tcp t] certificates: expected a readable file; "
        "found 'nope.pem' (No such file or directory)"
    ]


# [pool]: TLS to the servers.


def test_a_pool_speaks_plain_tcp_to_its_servers_unless_told(tmp_path: Path) -> None:
    assert load(tmp_path, pool("")).pools["web"].tls == TlsClientConfig()


def test_every_tls_key_of_a_pool_is_read(tmp_path: Path, ca: TestCA) -> None:
    ca.write_ca(tmp_path / "ca.pem")
    me = ca.issue(["proxyd"], client=True)
    me.write(tmp_path / "me.crt", with_key=False)
    me.write_key(tmp_path / "secret.key")
    text = pool(
        "tls = on\ntls_ca = ca.pem\ntls_verify = on\ntls_server_name = API.internal\n"
        "tls_certificate = me.crt key=secret.key\n"
    )
    tls = load(tmp_path, text).pools["web"].tls
    assert tls.enabled and tls.verify and tls.ca == str(tmp_path / "ca.pem")
    assert tls.server_name == "api.internal"
    assert tls.certificate is not None
    assert tls.certificate.leaf == me.cert
    assert tls.certificate.key_path == str(tmp_path / "secret.key")


def test_tls_server_name_may_be_an_ip_address(tmp_path: Path) -> None:
    text = pool("tls = on\ntls_server_name = ::FFFF:10.0.0.5\n")
    assert load(tmp_path, text).pools["web"].tls.server_name == "::ffff:a00:5"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("tls = maybe\n", "proxyd.ini:3: [pool web] tls: expected on or off; found 'maybe'"),
        (
            "tls = on\ntls_verify = perhaps\n",
            "proxyd.ini:4: [pool web] tls_verify: expected on or off; found 'perhaps'",
        ),
        (
            "tls = on\ntls_ca = nope.pem\n",
            "proxyd.ini:4: [pool web] tls_ca: expected a readable file; "
            "found 'nope.pem' (No such file or directory)",
        ),
        (
            "tls = on\ntls_ca = proxyd.ini\n",
            "proxyd.ini:4: [pool web] tls_ca: expected a PEM file of CA certificates; "
            "found no certificate in 'proxyd.ini'",
        ),
        (
            "tls = on\ntls_server_name = not_a name\n",
            "proxyd.ini:4: [pool web] tls_server_name: expected a DNS name or an IP address; "
            "found 'not_a name'",
        ),
        (
            "tls = on\ntls_certificate = nope.pem\n",
            "proxyd.ini:4: [pool web] tls_certificate: expected a readable file; "
            "found 'nope.pem' (No such file or directory)",
        ),
        (
            "tls = on\ntls_certificate = certs\n",
            "proxyd.ini:4: [pool web] tls_certificate: expected a certificate file; "
            "found a directory 'certs'",
        ),
        (
            "tls = on\ntls_certificate =\n    me.pem\n    me.pem\n",
            "proxyd.ini:5: [pool web] tls_certificate: expected one certificate file "
            "[key=KEYFILE]; found 2 lines",
        ),
        (
            "tls = on\ntls_certificate = me.crt\n",
            "proxyd.ini:4: [pool web] tls_certificate: expected a private key in the "
            "certificate's file, beside it as NAME.key, or key=; found none for 'me.crt'",
        ),
        (
            "tls = on\ntls_certificate = me.pem key=other.key\n",
            "proxyd.ini:4: [pool web] tls_certificate: expected the private key of the "
            "certificate; found a key in 'other.key' that does not match 'me.pem'",
        ),
    ],
)
def test_bad_tls_keys_of_a_pool_are_errors(
    tmp_path: Path, ca: TestCA, extra: str, message: str
) -> None:
    (tmp_path / "certs").mkdir()
    me = ca.issue(["proxyd"], client=True)
    me.write(tmp_path / "me.pem")
    me.write(tmp_path / "me.crt", with_key=False)
    ca.issue(["other"], client=True).write_key(tmp_path / "other.key")
    assert errors(tmp_path, pool(extra)) == [message]


def test_an_http_check_on_a_tls_pool_runs_over_tls(tmp_path: Path, ca: TestCA) -> None:
    ca.write_ca(tmp_path / "ca.pem")
    text = pool("tls = on\ntls_ca = ca.pem\ncheck = http GET /health\n")
    web = load(tmp_path, text).pools["web"]
    assert isinstance(web.check, TlsCheck)
    assert web.check.tls is web.tls
    assert isinstance(web.check.http, HttpCheck) and web.check.http.path == "/health"


def test_an_http_check_on_a_plain_pool_stays_plain(tmp_path: Path) -> None:
    web = load(tmp_path, pool("check = http GET /health\n")).pools["web"]
    assert isinstance(web.check, HttpCheck)


@pytest.mark.parametrize("tls", ["on", "off"])
def test_a_tls_check_uses_the_pools_tls_keys(tmp_path: Path, ca: TestCA, tls: str) -> None:
    ca.write_ca(tmp_path / "ca.pem")
    text = pool(f"tls = {tls}\ntls_ca = ca.pem\ntls_server_name = api.test\ncheck = tls\n")
    web = load(tmp_path, text).pools["web"]
    assert isinstance(web.check, TlsCheck) and web.check.http is None
    assert web.check.tls is web.tls
    assert web.check.tls.server_name == "api.test"


def test_tls_verify_off_is_warned_about(tmp_path: Path) -> None:
    assert warnings(tmp_path, pool("tls = on\ntls_verify = off\n")) == [
        "proxyd.ini: [pool web] tls_verify = off: the servers' certificates are not checked, "
        "anyone on the path can pose as them"
    ]


def test_tls_verify_off_for_a_tls_check_alone_is_warned_about(tmp_path: Path) -> None:
    assert warnings(tmp_path, pool("tls_verify = off\ncheck = tls\n")) == [
        "proxyd.ini: [pool web] tls_verify = off: the servers' certificates are not checked, "
        "anyone on the path can pose as them"
    ]


def test_verified_or_unused_pool_tls_is_not_warned_about(tmp_path: Path, site: Issued) -> None:
    assert warnings(tmp_path, pool("tls = on\n")) == []
    assert warnings(tmp_path, pool("tls_verify = off\n")) == []
    assert warnings(tmp_path, https()) == []
