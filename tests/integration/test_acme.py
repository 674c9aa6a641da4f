"""ACME (proxyd.acme) end to end against Debian's pebble on loopback: http-01 and tls-alpn-01
issuance, a restart that serves the stored certificate without a new order, the renewal of a
short-lived certificate under an open connection, and an account registered with an external
account binding. Names under example.test resolve to 127.0.0.1 through a dnsmasq that pebble's
validator asks (`-dnsserver`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import attrs
import pytest
from cryptography import x509

from tests.certs import TestCA

from .harness import Process, ProcessList, Proxyd, free_port, wait_until
from .test_dns_relay import dnsmasq
from .test_l4_access import metrics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble missing (apt: pebble)"),
]

EAB_KID = "kid-1"
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
"""pebble's example external account binding (pebble-config-external-account-bindings.json)."""


@attrs.frozen
class Pebble:
    process: Process
    directory: str
    ca: Path
    http_port: int
    https_port: int

    def orders(self) -> int:
        return self.process.output().count("Added order")


@pytest.fixture
def pebble(processes: ProcessList, tmp_path: Path) -> Callable[..., Pebble]:
    """`pebble(validity=None, eab=None)`: a pebble whose validator resolves *.example.test to
    127.0.0.1 and validates on two ports it returns, for proxyd's [http] and [https]; with
    `eab` (kid: base64url MAC key), new accounts need an external account binding by one."""
    dns_port, _ = dnsmasq(processes, tmp_path, "acme", "127.0.0.1")
    ca = TestCA("pebble test CA")
    ca_path = ca.write_ca(tmp_path / "pebble-ca.pem")
    served = ca.issue(["localhost", "127.0.0.1"])
    cert = served.write(tmp_path / "pebble-cert.pem", with_key=False)
    key = served.write_key(tmp_path / "pebble-key.pem")

    def start(validity: int | None = None, eab: Mapping[str, str] | None = None) -> Pebble:
        port, management, http_port, https_port = (free_port() for _ in range(4))
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": https_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab is not None,
        }
        if validity is not None:
            settings["certificateValidityPeriod"] = validity
        if eab is not None:
            settings["externalAccountMACKeys"] = dict(eab)
        config = tmp_path / f"pebble-{port}.json"
        config.write_text(json.dumps({"pebble": settings}))
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        argv = ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"]
        process = processes.start(f"pebble-{port}", argv, env=env)
        process.wait_for_output(r"ACME directory available", 20)
        return Pebble(process, f"https://127.0.0.1:{port}/dir", ca_path, http_port, https_port)

    return start


def acme_config(pebble: Pebble, storage: Path, names: str, challenges: str, more: str = "") -> str:
    """`more`: further lines of the [acme site] section."""
    return f"""
[pool web]
servers = 127.0.0.1:9

[acme site]
names = {names}
contact = mailto:ops@example.test
directory = {pebble.directory}
ca = {pebble.ca}
storage = {storage}
challenges = {challenges}
retry_min = 1s
{more}

[http plain]
listen = tcp:{pebble.http_port}:interface=127.0.0.1
routes =
    path / -> respond 200 "plain"

[https secure]
listen = tcp:{pebble.https_port}:interface=127.0.0.1
acme = site
routes =
    path / -> respond 200 "secure"
"""


def _client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pebble's issuing root is new at each start
    return ctx


def served_certificate(port: int, name: str) -> x509.Certificate:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _client().wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def names_of(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def is_pebbles(certificate: x509.Certificate) -> bool:
    return "Pebble Intermediate CA" in certificate.issuer.rfc4514_string()


def get(tls: ssl.SSLSocket, name: str) -> bytes:
    tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    data = b""
    for _ in range(100):
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"secure"):
            break
    return data


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "acme-storage"


def test_http01_issuance_then_a_restart_serves_the_stored_certificate_without_ordering(
    pebble: Callable[..., Pebble], proxyd: Callable[..., Proxyd], storage: Path
) -> None:
    ca = pebble()
    config = acme_config(ca, storage, "a.example.test www.example.test", "http-01")
    first = proxyd(config)
    first.wait_for_log(r"acme site: new certificate for", 60)
    certificate = served_certificate(ca.https_port, "www.example.test")
    assert is_pebbles(certificate)
    assert sorted(names_of(certificate)) == ["a.example.test", "www.example.test"]
    assert ca.orders() == 1
    for name in ("account.key", "account.json", "certificate.pem", "certificate.key"):
        assert stat.S_IMODE((storage / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    assert list((storage / "http-01").iterdir()) == []  # the answers went with the order

    assert first.terminate() == 0
    second = proxyd(config)
    second.wait_for_log(r"acme site: serving the stored certificate", 20)
    again = served_certificate(ca.https_port, "a.example.test")
    assert again.serial_number == certificate.serial_number
    assert ca.orders() == 1
    assert "ordering a certificate" not in second.log()


def test_tls_alpn01_issuance(
    pebble: Callable[..., Pebble], proxyd: Callable[..., Proxyd], storage: Path
) -> None:
    ca = pebble()
    instance = proxyd(acme_config(ca, storage, "alpn.example.test", "tls-alpn-01"))
    instance.wait_for_log(r"acme site: new certificate for", 60)
    certificate = served_certificate(ca.https_port, "alpn.example.test")
    assert is_pebbles(certificate)
    assert names_of(certificate) == ["alpn.example.test"]
    assert ca.orders() == 1
    assert list((storage / "tls-alpn-01").iterdir()) == []


def test_a_short_lived_certificate_is_renewed_under_an_open_connection(
    pebble: Callable[..., Pebble], proxyd: Callable[..., Proxyd], storage: Path
) -> None:
    ca = pebble(validity=12)  # seconds: renewed a third ahead, at about 8 s
    instance = proxyd(acme_config(ca, storage, "short.example.test", "http-01 tls-alpn-01"))
    instance.wait_for_log(r"acme site: new certificate for", 60)
    first = served_certificate(ca.https_port, "short.example.test")
    raw = socket.create_connection(("127.0.0.1", ca.https_port), timeout=10)
    with _client().wrap_socket(raw, server_hostname="short.example.test") as kept:
        assert get(kept, "short.example.test").endswith(b"secure")
        wait_until(lambda: ca.orders() >= 2 and "valid until" in instance.log(), 30, "an order")
        renewed = wait_until(
            lambda: (
                (c := served_certificate(ca.https_port, "short.example.test")).serial_number
                != first.serial_number
                and c
            ),
            30,
            "a new certificate served",
        )
        assert is_pebbles(renewed)
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        # The connection opened on the first certificate still works.
        answer = get(kept, "short.example.test")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"secure")


def test_with_workers_the_master_orders_and_every_worker_serves_the_certificate(
    pebble: Callable[..., Pebble], proxyd: Callable[..., Proxyd], storage: Path, tmp_path: Path
) -> None:
    ca = pebble()
    admin = free_port()
    config = acme_config(ca, storage, "workers.example.test", "http-01")
    config += f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n"
    instance = proxyd(f"[proxyd]\nworkers = 2\naccess_log = {tmp_path}/access.log\n" + config)
    instance.wait_for_log(r"acme site: new certificate for", 60)
    instance.wait_for_log(r"acme site: certificate loaded from storage", 20)
    # Each new connection goes to one worker or the other: all see the new certificate.

    def serials_served() -> set[int] | None:
        found = [served_certificate(ca.https_port, "workers.example.test") for _ in range(8)]
        return {c.serial_number for c in found} if all(map(is_pebbles, found)) else None

    serials = wait_until(serials_served, 20, "every worker serving the new certificate")
    assert len(serials) == 1
    assert ca.orders() == 1
    # The master's figures, once (not summed over the workers).
    found = wait_until(
        lambda: (m := metrics(admin)).get(("proxyd_workers", ())) == 2 and m, 20, "2 workers"
    )
    site = (("acme", "site"),)
    expiry = served_certificate(ca.https_port, "workers.example.test").not_valid_after_utc
    assert found[("proxyd_acme_certificate_expiry_timestamp_seconds", site)] == expiry.timestamp()
    assert found[("proxyd_acme_orders_total", (*site, ("result", "success")))] == 1
    assert found[("proxyd_acme_orders_total", (*site, ("result", "failure")))] == 0
    assert found[("proxyd_acme_consecutive_failures", site)] == 0
    began = found[("proxyd_acme_last_attempt_timestamp_seconds", site)]
    renewal = found[("proxyd_acme_next_attempt_timestamp_seconds", site)]
    assert began < renewal < expiry.timestamp()


def test_an_account_is_registered_with_an_external_account_binding(
    pebble: Callable[..., Pebble], proxyd: Callable[..., Proxyd], storage: Path
) -> None:
    ca = pebble(eab={EAB_KID: EAB_KEY})
    binding = f"eab_kid = {EAB_KID}\neab_hmac_key = {EAB_KEY}"
    instance = proxyd(acme_config(ca, storage, "eab.example.test", "http-01", binding))
    instance.wait_for_log(r"acme site: new certificate for", 60)
    certificate = served_certificate(ca.https_port, "eab.example.test")
    assert is_pebbles(certificate) and names_of(certificate) == ["eab.example.test"]
    assert ca.orders() == 1
    assert EAB_KEY not in instance.log()


def test_a_wrong_external_account_key_is_refused_logged_without_it_and_retried(
    pebble: Callable[..., Pebble], proxyd: Callable[..., Proxyd], storage: Path
) -> None:
    ca = pebble(eab={EAB_KID: EAB_KEY})
    wrong = "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH"
    binding = f"eab_kid = {EAB_KID}\neab_hmac_key = {wrong}"
    instance = proxyd(acme_config(ca, storage, "wrong.example.test", "http-01", binding))
    failed = instance.wait_for_log(r"acme site: order failed: (.*); next try in 1s", 30)
    assert "external account binding JWS verification error" in failed.group(1)
    instance.wait_for_log(r"acme site: order failed: .*; next try in 2s", 30)
    assert wrong not in instance.log()
    assert ca.orders() == 0
    assert not is_pebbles(served_certificate(ca.https_port, "wrong.example.test"))
