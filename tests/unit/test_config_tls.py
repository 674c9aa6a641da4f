"""TLS configuration: certificates read and checked at load, the TLS keys of [https], [tcp]
and [pool], and the warnings that do not stop proxyd."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from proxyd.cli import tls_warnings
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import TlsCheck
from tests.certs import TestCA

POOL = "[pool web]\nservers = 127.0.0.1:9001\n"  # lines 1-2


def https(certificates: str = "site.pem", extra: str = "") -> str:
    """[https h] on line 3, certificates on line 5."""
    return (
        POOL
        + f"[https h]\nlisten = tcp:8443\ncertificates = {certificates}\n"
        + "routes =\n    path / -> pool web\n"
        + extra
    )


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    return loads(text, str(tmp_path / "proxyd.ini"))


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path, text)
    return [str(e).replace(str(tmp_path) + "/", "") for e in info.value.errors]


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


def test_a_combined_pem_loads_with_its_names(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test", "*.b.test", "10.0.0.1"]).write(tmp_path / "site.pem")
    tls = load(tmp_path, https()).http[0].tls
    assert tls.loaded[0].names == ("a.test", "*.b.test", "10.0.0.1")
    assert tls.protocols == ("TLSv1.2", "TLSv1.3")


def test_a_key_beside_the_certificate_or_named_by_key_is_found(tmp_path: Path, ca: TestCA) -> None:
    issued = ca.issue(["a.test"])
    issued.write(tmp_path / "site.crt", with_key=False)
    issued.write_key(tmp_path / "site.key")
    assert load(tmp_path, https("site.crt")).http[0].tls.loaded[0].key_path.endswith("site.key")
    issued.write_key(tmp_path / "other.key")
    tls = load(tmp_path, https("site.crt key=other.key")).http[0].tls
    assert tls.loaded[0].key_path.endswith("other.key")


def test_a_directory_loads_every_certificate_in_name_order(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "certs").mkdir()
    ca.issue(["b.test"]).write(tmp_path / "certs" / "2-b.pem")
    ca.issue(["a.test"]).write(tmp_path / "certs" / "1-a.pem")
    (tmp_path / "certs" / "notes.txt").write_text("ignored")
    tls = load(tmp_path, https("certs/")).http[0].tls
    assert [c.names for c in tls.loaded] == [("a.test",), ("b.test",)]


def test_a_missing_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    assert errors(tmp_path, https("nope.pem")) == [
        "proxyd.ini:5: [https h] certificates: expected a readable file; "
        "found 'nope.pem' (No such file or directory)"
    ]


def test_a_certificate_without_a_key_is_an_error(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem", with_key=False)
    assert errors(tmp_path, https()) == [
        "proxyd.ini:5: [https h] certificates: expected a private key in the certificate's "
        "file, beside it as NAME.key, or key=; found none for 'site.pem'"
    ]


def test_a_key_that_does_not_match_is_an_error(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.crt", with_key=False)
    ca.issue(["b.test"]).write_key(tmp_path / "site.key")
    assert errors(tmp_path, https("site.crt")) == [
        "proxyd.ini:5: [https h] certificates: expected the private key of the certificate; "
        "found a key in 'site.key' that does not match 'site.crt'"
    ]


def test_a_directory_without_certificates_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert errors(tmp_path, https("empty")) == [
        "proxyd.ini:5: [https h] certificates: expected a directory holding certificates "
        "(*.pem, *.crt); found none in 'empty'"
    ]


def test_a_certificate_not_yet_valid_is_an_error(tmp_path: Path, ca: TestCA) -> None:
    ca.not_yet_valid(["a.test"]).write(tmp_path / "site.pem")
    [error] = errors(tmp_path, https())
    assert error.startswith(
        "proxyd.ini:5: [https h] certificates: expected a certificate valid now; "
        "found 'site.pem' not valid before "
    )


def test_an_expired_certificate_is_a_loud_warning_or_with_refuse_an_error(
    tmp_path: Path, ca: TestCA
) -> None:
    ca.expired(["a.test"]).write(tmp_path / "site.pem")
    config = load(tmp_path, https())
    [warning] = tls_warnings(config)
    assert "[https h] certificates:" in warning and "EXPIRED" in warning
    [error] = errors(tmp_path, https(extra="expired_certificates = refuse\n"))
    assert "expected certificates valid now (expired_certificates = refuse)" in error


def test_a_certificate_expiring_soon_is_warned_about(tmp_path: Path, ca: TestCA) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca.issue(["a.test"], not_after=now + datetime.timedelta(days=3)).write(tmp_path / "site.pem")
    [warning] = tls_warnings(load(tmp_path, https()))
    assert "expires on" in warning


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "tls_protocols = TLSv1.1 TLSv1.2\n",
            "proxyd.ini:8: [https h] tls_protocols: expected TLSv1.2, TLSv1.3 or both; found "
            "'TLSv1.1' (TLS 1.0 and 1.1 are obsolete (RFC 8996))",
        ),
        (
            "tls_ciphers = NOTHING-KNOWN\n",
            "proxyd.ini:8: [https h] tls_ciphers: expected an OpenSSL cipher list such as "
            "ECDHE+AESGCM; found 'NOTHING-KNOWN' (OpenSSL matched no cipher)",
        ),
        (
            "tls_verify_client = required\n",
            "proxyd.ini:8: [https h] tls_verify_client: expected tls_client_ca, the CA bundle "
            "client certificates are verified against; found tls_verify_client = required "
            "without it",
        ),
        (
            "hsts = forever\n",
            "proxyd.ini:8: [https h] hsts: expected off, or a max-age such as 1y or 365d, then "
            "includeSubDomains and/or preload; found 'forever'",
        ),
    ],
)
def test_bad_tls_keys_are_errors(tmp_path: Path, ca: TestCA, extra: str, message: str) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem")
    assert errors(tmp_path, https(extra=extra)) == [message]


def test_hsts_values(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem")
    hsts = load(tmp_path, https(extra="hsts = 1y includeSubDomains preload\n")).http[0].hsts
    assert hsts == "max-age=31536000; includeSubDomains; preload"
    assert load(tmp_path, https(extra="hsts = off\n")).http[0].hsts is None


@pytest.mark.parametrize(("value", "port"), [("on", 443), ("off", None), ("8443", 8443)])
def test_https_redirect_values(tmp_path: Path, value: str, port: int | None) -> None:
    text = (
        POOL + f"[http h]\nlisten = tcp:80\nhttps_redirect = {value}\nroutes = path / -> pool web\n"
    )
    assert load(tmp_path, text).http[0].https_redirect == port


def tcp(extra: str) -> str:
    """[tcp t] on line 3, its keys from line 5."""
    return POOL + "[tcp t]\nlisten = tcp:465\n" + extra


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "pool = web\ntls_ciphers = ECDHE+AESGCM\n",
            "proxyd.ini:6: [tcp t] tls_ciphers: expected 'tls_ciphers' only with certificates "
            "(TLS termination); found none",
        ),
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
            "route_by = sni\nroutes =\n    a.test -> pool wbe\n",
            "proxyd.ini:7: [tcp t] routes: expected the name of a [pool] ('web'); found 'wbe' "
            "(did you mean 'web'?)",
        ),
        (
            "route_by = sni\nroutes =\n    a.test => web\n",
            "proxyd.ini:7: [tcp t] routes: expected NAME -> pool POOL, NAME a server name or "
            "*.domain; found 'a.test => web'",
        ),
        ("connect_timeout = 1s\n", "proxyd.ini:3: [tcp t] pool: expected a 'pool' key; found none"),
    ],
)
def test_tcp_tls_and_sni_keys_are_checked_together(
    tmp_path: Path, extra: str, message: str
) -> None:
    assert errors(tmp_path, tcp(extra)) == [message]


def test_sni_passthrough_and_termination_exclude_each_other(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem")
    text = tcp("route_by = sni\nroutes = a.test -> pool web\ncertificates = site.pem\n")
    [error] = errors(tmp_path, text)
    assert "route_by = sni (passthrough) or certificates (termination), not both" in error


def test_a_tcp_listener_with_certificates_terminates_tls(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["mail.test"]).write(tmp_path / "site.pem")
    listener = load(tmp_path, tcp("pool = web\ncertificates = site.pem\ntls_alpn = smtp\n")).tcp[0]
    assert listener.tls is not None and listener.tls.alpn == ("smtp",)


def test_pool_tls_keys_and_the_http_check_over_tls(tmp_path: Path, ca: TestCA) -> None:
    ca.write_ca(tmp_path / "ca.pem")
    ca.issue(["proxyd"], client=True).write(tmp_path / "me.pem")
    text = (
        "[pool web]\nservers = 10.0.0.5:443\ntls = on\ntls_ca = ca.pem\n"
        "tls_server_name = API.internal\ntls_certificate = me.pem\ncheck = http GET /h\n"
    )
    pool = load(tmp_path, text).pools["web"]
    assert pool.tls.enabled and pool.tls.server_name == "api.internal"
    assert pool.tls.certificate is not None and pool.tls.certificate.names == ("proxyd",)
    assert isinstance(pool.check, TlsCheck) and pool.check.http is not None
    assert pool.check.tls is pool.tls


def test_tls_verify_off_is_warned_about(tmp_path: Path) -> None:
    text = "[pool web]\nservers = 10.0.0.5:443\ntls = on\ntls_verify = off\n"
    [warning] = tls_warnings(load(tmp_path, text))
    assert "[pool web] tls_verify = off" in warning


def test_accept_proxy_with_tls_termination_is_refused(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem")
    text = tcp("pool = web\ncertificates = site.pem\naccept_proxy = on\n")
    assert errors(tmp_path, text) == [
        "proxyd.ini:7: [tcp t] accept_proxy: expected accept_proxy without certificates "
        "(not supported yet); found both"
    ]
