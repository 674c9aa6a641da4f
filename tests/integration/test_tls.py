"""TLS on [https] listeners and to upstreams, in the real proxyd, beyond test_https.py: wildcard
and case rules of SNI, narrowed protocols and suites, ALPN without overlap, optional client
certificates and forged identity headers, HSTS and the redirect to HTTPS, upstream SNI and
client certificates, the http check over TLS, expired certificates, and reloads that add a
file, meet a mismatched key or an expired certificate."""

from __future__ import annotations

import datetime
import re
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.certs import TestCA, self_signed

from .harness import free_port, twistd_argv, wait_until
from .tlsclient import (
    client_context,
    curl,
    dns_names,
    echoed_headers,
    fails,
    get,
    names_seen,
    reload,
    tls_connection,
)

pytestmark = pytest.mark.integration

DAY = datetime.timedelta(days=1)


def https_config(
    port: int, backend_port: int, certificates: Sequence[Path | str], extra: str = ""
) -> str:
    lines = "".join(f"    {path}\n" for path in certificates)
    return (
        f"[pool web]\nservers = 127.0.0.1:{backend_port}\n\n"
        f"[https front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"certificates =\n{lines}routes =\n    path / -> pool web\n{extra}\n"
    )


def fetch(
    port: int,
    path: str = "/echo",
    *,
    server_name: str | None = "proxyd.test",
    context: ssl.SSLContext,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    with tls_connection(port, server_name, context) as tls:
        return get(tls, path, headers)


def test_sni_wildcards_cover_one_label_and_names_ignore_case(certs, http_backend, proxyd) -> None:
    paths = [
        certs("default", ["default.example.test"]),
        certs("a", ["a.example.test"]),
        certs("c", ["*.c.example.test"]),
    ]
    cafile = paths[0].parent / "ca.pem"
    port = free_port()
    relay = proxyd(https_config(port, http_backend.port, paths))

    with tls_connection(port, "A.Example.TEST", client_context(cafile)) as tls:
        assert dns_names(tls) == ["a.example.test"]
        status, _, _ = get(tls, "/")
        assert status == 200
    with tls_connection(port, "x.c.example.test", client_context(cafile)) as tls:
        assert dns_names(tls) == ["*.c.example.test"]
    # RFC 6125 6.4.3: a wildcard stands for exactly one label.
    for name in ("c.example.test", "y.x.c.example.test", "example.test"):
        assert names_seen(port, name, cafile) == ["default.example.test"], name
    [record] = relay.wait_access_records(1)
    assert record["sni"].lower() == "a.example.test"
    assert record["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_protocols_and_ciphersuites_narrow_what_is_accepted(
    certs, http_backend, proxyd
) -> None:
    pem = certs("site", ["proxyd.test"])
    cafile = pem.parent / "ca.pem"
    port = free_port()
    relay = proxyd(
        https_config(
            port,
            http_backend.port,
            [pem],
            "tls_protocols = TLSv1.3\ntls_ciphersuites = TLS_AES_256_GCM_SHA384\n",
        )
    )
    tls12 = client_context(cafile, version=ssl.TLSVersion.TLSv1_2)
    assert "protocol" in fails(fetch, port, context=tls12)
    relay.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: .*protocol")

    # A client that offers only protocols proxyd does not speak continues without ALPN.
    context = client_context(cafile, alpn=["spdy/3"])
    with tls_connection(port, "proxyd.test", context) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.cipher()[0] == "TLS_AES_256_GCM_SHA384"
        assert tls.selected_alpn_protocol() is None
        status, _, body = get(tls, "/echo", {"X-Forwarded-Proto": "http"})
    assert status == 200
    assert echoed_headers(body)["X-Forwarded-Proto"] == "https"  # not the client's word


def test_client_certificates_optional_and_required(
    tmp_path, ca, certs, http_backend, proxyd
) -> None:
    clients_ca = TestCA("clients CA")
    clients_ca.write_ca(tmp_path / "clients-ca.pem")
    alice = clients_ca.issue(["alice"], client=True).write(tmp_path / "alice.pem")
    now = datetime.datetime.now(datetime.UTC)
    old = clients_ca.issue(
        ["old-alice"], client=True, not_before=now - 9 * DAY, not_after=now - DAY
    )
    old_pem = old.write(tmp_path / "old-alice.pem")
    mallory = TestCA("another CA").issue(["mallory"], client=True).write(tmp_path / "mallory.pem")
    server = certs("site", ["proxyd.test"])
    cafile = server.parent / "ca.pem"
    optional, required = free_port(), free_port()
    identity = (
        f"tls_client_ca = {tmp_path / 'clients-ca.pem'}\nroutes =\n    path / -> pool web\n"
        "request_headers =\n    set X-Client-Subject {tls_client_subject}\n"
        "    set X-Client-Issuer {tls_client_issuer}\n"
        "    set X-Client-Verify {tls_client_verify}\n"
    )
    relay = proxyd(
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n\n"
        f"[https optional]\nlisten = tcp:{optional}:interface=127.0.0.1\n"
        f"certificates = {server}\ntls_verify_client = optional\n{identity}\n"
        f"[https required]\nlisten = tcp:{required}:interface=127.0.0.1\n"
        f"certificates = {server}\ntls_verify_client = required\n{identity}\n"
    )

    # optional: no certificate is let in as NONE, and a forged identity header is removed.
    forged = {"X-Client-Subject": "CN=admin", "X-Client-Verify": "SUCCESS"}
    status, _, body = fetch(optional, context=client_context(cafile), headers=forged)
    assert status == 200
    headers = echoed_headers(body)
    assert headers["X-Client-Verify"] == "NONE"
    assert "X-Client-Subject" not in headers
    status, _, body = fetch(optional, context=client_context(cafile, cert=alice))
    assert status == 200
    headers = echoed_headers(body)
    assert headers["X-Client-Verify"] == "SUCCESS"
    assert headers["X-Client-Subject"] == "CN=alice,O=proxyd tests"
    assert headers["X-Client-Issuer"] == "CN=clients CA"
    # A resumed TLS 1.2 session keeps the identity its full handshake verified.
    context = client_context(cafile, cert=alice, version=ssl.TLSVersion.TLSv1_2)
    with tls_connection(optional, "proxyd.test", context) as tls:
        get(tls, "/")
        session = tls.session
    sock = socket.create_connection(("127.0.0.1", optional), timeout=10)
    with context.wrap_socket(sock, server_hostname="proxyd.test", session=session) as tls:
        assert tls.session_reused
        status, _, body = get(tls, "/echo")
    assert echoed_headers(body)["X-Client-Subject"] == "CN=alice,O=proxyd tests"
    # optional still refuses a certificate that does not verify.
    fails(fetch, optional, context=client_context(cafile, cert=mallory))
    relay.wait_for_log(
        r"https optional: client certificate of 127\.0\.0\.1:\d+ refused: "
        r"unable to get local issuer certificate \(CN=mallory"
    )

    fails(fetch, required, context=client_context(cafile, cert=old_pem))
    relay.wait_for_log(
        r"https required: client certificate of 127\.0\.0\.1:\d+ refused: "
        r"certificate has expired \(CN=old-alice"
    )


def test_hsts_on_every_https_answer_and_the_redirect_to_https(certs, http_backend, proxyd) -> None:
    pem = certs("site", ["proxyd.test"])
    port, plain = free_port(), free_port()
    proxyd(
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n"
        f"[pool dead]\nservers = 127.0.0.1:{free_port()}\n\n"
        f"[https front]\nlisten = tcp:{port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "hsts = 1y includeSubDomains\n"
        "routes =\n    path /dead -> pool dead\n    path / -> pool web\n\n"
        f"[http plain]\nlisten = tcp:{plain}:interface=127.0.0.1\nhttps_redirect = 8443\n"
        "routes =\n    path / -> pool web\n"
    )
    context = client_context(pem.parent / "ca.pem")
    hsts = "max-age=31536000; includeSubDomains"
    status, headers, _ = fetch(port, "/", context=context)
    assert (status, headers.get("strict-transport-security")) == (200, hsts)
    status, headers, _ = fetch(port, "/dead", context=context)  # proxyd's own error page
    assert (status, headers.get("strict-transport-security")) == (502, hsts)

    result = curl("-D", "-", "-o", "/dev/null", "-X", "POST", "-H", "Host: proxyd.test",
                  f"http://127.0.0.1:{plain}/a/b?c=d")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 308 "), result.stdout
    assert re.search(r"(?im)^location: https://proxyd\.test:8443/a/b\?c=d\r?$", result.stdout)
    assert "strict-transport-security" not in result.stdout.lower()  # RFC 6797 7.2


def test_upstream_tls_sends_the_server_name_and_a_client_certificate(
    tmp_path, ca, certs, http_backend, proxyd
) -> None:
    """proxyd -> TLS -> a second proxyd's [https] that requires a client certificate and
    holds a certificate for api.internal only (not for 127.0.0.1, the server line's host)."""
    clients_ca = TestCA("clients CA")
    clients_ca.write_ca(tmp_path / "clients-ca.pem")
    client_pem = clients_ca.issue(["proxyd-client"], client=True).write(tmp_path / "client.pem")
    api = certs("api", ["api.internal"])
    api_port = free_port()
    api_relay = proxyd(
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n\n"
        f"[https api]\nlisten = tcp:{api_port}:interface=127.0.0.1\ncertificates = {api}\n"
        f"tls_verify_client = required\ntls_client_ca = {tmp_path / 'clients-ca.pem'}\n"
        "request_headers =\n    set X-Client-Subject {tls_client_subject}\n"
        "    set X-Sni {tls_sni}\nroutes =\n    path / -> pool web\n"
    )
    pool = f"servers = 127.0.0.1:{api_port}\ntls = on\ntls_ca = {api.parent / 'ca.pem'}\n"
    port = free_port()
    relay = proxyd(
        f"[pool api]\n{pool}tls_server_name = api.internal\ntls_certificate = {client_pem}\n\n"
        f"[pool no-cert]\n{pool}tls_server_name = api.internal\n\n"
        f"[pool by-ip]\n{pool}tls_certificate = {client_pem}\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\nretries = 0\nroutes =\n"
        "    path /no-cert/ -> pool no-cert\n    path /by-ip/ -> pool by-ip\n"
        "    path / -> pool api\n"
    )
    result = curl(f"http://127.0.0.1:{port}/echo")
    assert result.returncode == 0, result.stderr
    headers = echoed_headers(result.stdout.encode())
    assert headers["X-Client-Subject"] == "CN=proxyd-client,O=proxyd tests"
    assert headers["X-Sni"] == "api.internal"

    status = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/no-cert/")
    assert status.stdout == "502"
    api_relay.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: peer did not return")
    status = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/by-ip/")
    assert status.stdout == "502"
    relay.wait_for_log(r"pool by-ip: TLS handshake failed: certificate is not for 127\.0\.0\.1")


def test_an_http_check_over_tls_takes_a_server_with_a_bad_certificate_down(
    certs, tls_server, proxyd
) -> None:
    good = tls_server(certs("good", ["127.0.0.1"]))
    bad = tls_server(certs("bad", ["127.0.0.1"], self_signed(["127.0.0.1"])))
    cafile = certs("x", ["x"]).parent / "ca.pem"
    port = free_port()
    relay = proxyd(
        f"[pool p]\nservers = 127.0.0.1:{good} 127.0.0.1:{bad}\ntls = on\ntls_ca = {cafile}\n"
        "check = http GET /\ncheck_interval = 200ms\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\nretries = 0\n"
        "routes =\n    path / -> pool p\n"
    )
    match = relay.wait_for_state(f"127.0.0.1:{bad}", "p", "DOWN")
    line = relay.log()[match.start() : relay.log().find("\n", match.start())]
    assert re.search(r"TLS|certificate", line), line
    codes = [
        curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/").stdout
        for _ in range(4)
    ]
    assert codes == ["200"] * 4  # retries = 0: only the good server is picked
    assert f"127.0.0.1:{good} in pool p is DOWN" not in relay.log()


def test_an_expired_certificate_is_served_with_a_warning_or_refused(
    tmp_path, ca, certs, http_backend, proxyd
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    pem = certs("old", ["proxyd.test"], ca.issue(["proxyd.test"], not_before=now - 9 * DAY,
                                                  not_after=now - DAY))  # fmt: skip
    port = free_port()
    relay = proxyd(https_config(port, http_backend.port, [pem]))
    relay.wait_for_log(r"\[https front\] certificates: .*old\.pem EXPIRED on")
    assert "expired" in fails(fetch, port, context=client_context(pem.parent / "ca.pem"))

    config = tmp_path / "refuse.ini"
    config.write_text(
        "[proxyd]\naccess_log = off\n\n"
        + https_config(free_port(), http_backend.port, [pem], "expired_certificates = refuse\n")
    )
    result = subprocess.run(
        twistd_argv(config), capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert re.search(r"expired_certificates = refuse.*old\.pem.* expired", output), output


def test_reload_reads_a_directory_anew_and_keeps_the_old_certificates_on_a_bad_key(
    tmp_path, ca, http_backend, proxyd
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    cafile = ca.write_ca(tmp_path / "ca.pem")
    ca.issue(["default.example.test"]).write(site / "0-default.pem")
    port = free_port()
    relay = proxyd(https_config(port, http_backend.port, [f"{site}/"]))
    assert names_seen(port, "b.example.test", cafile) == ["default.example.test"]

    ca.issue(["b.example.test"]).write(site / "b.pem")
    reload(relay, r"reloaded .*: generation 2")
    assert names_seen(port, "b.example.test", cafile) == ["b.example.test"]

    # c.pem with a c.key beside it that belongs to another certificate.
    ca.issue(["c.example.test"]).write(site / "c.pem", with_key=False)
    ca.issue(["other.test"]).write_key(site / "c.key")
    reload(
        relay,
        r"reload refused: .*\[https front\] certificates: .*"
        r"found a key in '.*c\.key' that does not match '.*c\.pem'",
    )
    assert names_seen(port, "b.example.test", cafile) == ["b.example.test"]
    assert names_seen(port, "c.example.test", cafile) == ["default.example.test"]


def test_reload_warns_about_an_expired_certificate(tmp_path, ca, http_backend, proxyd) -> None:
    pem = ca.issue(["proxyd.test"]).write(tmp_path / "site.pem")
    port = free_port()
    relay = proxyd(https_config(port, http_backend.port, [pem]))
    now = datetime.datetime.now(datetime.UTC)
    ca.issue(["proxyd.test"], not_before=now - 9 * DAY, not_after=now - DAY).write(pem)
    start = relay.log_offset()
    reload(relay, r"reloaded .*: generation 2")
    wait_until(lambda: re.search(r"(?i)site\.pem.*expired", relay.log()[start:]), 2, "a warning")
