"""proxyd.acme without a CA: the renewal schedule on an injected clock, which names a
certificate covers, the storage's files and modes, the challenge answers, the account's
registration (with an external account binding) on a fake client, the service ordering,
renewing and backing off on MemoryReactorClock with a fake order, and the [acme] keys."""

from __future__ import annotations

import datetime
import json
import random
import stat
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import josepy
import pytest
from acme import jws, messages
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from proxyd.acme import client
from proxyd.acme.challenges import (
    ACME_IDENTIFIER,
    Answers,
    HttpChallenges,
    acme_identifier_value,
    validation_certificate,
)
from proxyd.acme.schedule import Held, Schedule, covers, renewal_time
from proxyd.acme.service import AcmeService
from proxyd.acme.storage import Storage
from proxyd.admin.status import config_document
from proxyd.cli import main
from proxyd.config.acme_model import AcmeConfig
from proxyd.config.load import loads
from proxyd.config.model import TlsServerConfig
from proxyd.tls import ServerTls
from tests.certs import TestCA

DAY = 86400.0
MAC_KEY = "cHJveHlkIHRlc3QgTUFDIGtleSwgMzIgYnl0ZXMhISE"
"""An external account binding's MAC key, base64url (32 bytes)."""


def config(tmp_path: Path, **changes: object) -> AcmeConfig:
    fields: dict[str, object] = {
        "name": "site",
        "names": ("example.test", "www.example.test"),
        "storage": str(tmp_path / "acme"),
    }
    fields.update(changes)
    return AcmeConfig(**fields)  # type: ignore[arg-type]


# Which names a certificate covers.


def test_a_certificate_covers_its_names_and_one_level_of_wildcard() -> None:
    assert covers(["example.test", "www.example.test"], ["www.example.test"])
    assert covers(["*.example.test"], ["a.example.test"])
    assert not covers(["*.example.test"], ["example.test"])
    assert not covers(["*.example.test"], ["a.b.example.test"])
    assert not covers(["example.test"], ["example.test", "new.example.test"])
    assert covers(["EXAMPLE.test"], ["example.TEST"])


# The schedule.


def test_a_90_day_certificate_is_due_30_days_ahead_less_at_most_12_hours_of_jitter(
    tmp_path: Path,
) -> None:
    held = Held(0.0, 90 * DAY, ("example.test", "www.example.test"))
    acme = config(tmp_path)
    assert renewal_time(held, acme, 0.0) == 60 * DAY
    assert renewal_time(held, acme, 0.999) == pytest.approx(60 * DAY - 0.999 * 12 * 3600)
    assert renewal_time(held, config(tmp_path, renew_before=10 * DAY), 0.0) == 80 * DAY


def test_a_short_certificate_renews_at_two_thirds_with_a_tenth_of_jitter(
    tmp_path: Path,
) -> None:
    held = Held(1000.0, 1030.0, ("example.test", "www.example.test"))
    assert renewal_time(held, config(tmp_path), 0.5) == pytest.approx(1020.0 - 0.5)


def test_nothing_held_or_not_covering_is_ordered_now(tmp_path: Path) -> None:
    schedule = Schedule(config(tmp_path), random.Random(1))
    assert schedule.next_attempt(500.0) == 500.0
    schedule.hold(Held(0.0, 90 * DAY, ("example.test",)))  # www.example.test missing
    assert schedule.next_attempt(500.0) == 500.0
    schedule.hold(Held(0.0, 90 * DAY, ("example.test", "www.example.test")))
    assert 59 * DAY < schedule.next_attempt(500.0) <= 60 * DAY
    assert not schedule.due(DAY)


def test_failures_back_off_doubling_up_to_retry_max(tmp_path: Path) -> None:
    schedule = Schedule(config(tmp_path, retry_min=60.0, retry_max=300.0))
    waits = []
    for _ in range(5):
        schedule.failed()
        waits.append(schedule.next_attempt(1000.0) - 1000.0)
    assert waits == [60.0, 120.0, 240.0, 300.0, 300.0]
    schedule.hold(Held(0.0, 90 * DAY, ("example.test", "www.example.test")))
    assert schedule.failures == 0


# Storage.


def test_storage_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "acme"))
    storage.ensure()
    storage.account_key()
    storage.save_account_url("https://ca.test/acct/1")
    issued = TestCA().issue(["example.test"])
    storage.save_certificate(issued.pem(with_key=False), issued.key)
    storage.put_http_token("tok_en-1", "tok_en-1.thumb")
    root = tmp_path / "acme"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for name in ("account.key", "account.json", "certificate.pem", "certificate.key"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((root / "http-01" / "tok_en-1").stat().st_mode) == 0o600
    assert storage.account_url() == "https://ca.test/acct/1"
    loaded = storage.certificate()
    assert loaded is not None and loaded.names == ("example.test",)
    assert sorted(p.name for p in root.iterdir()) == [
        "account.json",
        "account.key",
        "certificate.key",
        "certificate.pem",
        "http-01",
        "tls-alpn-01",
    ]  # no temporary file left behind


def test_the_account_key_is_made_once_and_kept(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    first = storage.account_key()
    assert storage.account_key().private_numbers() == first.private_numbers()


def test_tokens_that_are_not_file_names_are_refused(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.ensure()
    with pytest.raises(ValueError):
        storage.put_http_token("../escape", "x")
    assert storage.http_token("../account.key") is None
    assert storage.alpn_certificate("../account") is None


# Challenge answers.


def test_http01_is_answered_from_memory_and_by_another_process_from_storage(
    tmp_path: Path,
) -> None:
    storage = Storage(str(tmp_path))
    storage.ensure()
    ordering = Answers(storage, ["example.test"])
    ordering.add_http("abc_DEF-1", "abc_DEF-1.thumbprint")
    worker = HttpChallenges([Answers(Storage(str(tmp_path)), ["example.test"])])
    here = HttpChallenges([ordering])
    path = b"/.well-known/acme-challenge/abc_DEF-1"
    assert here.answer(path) == b"abc_DEF-1.thumbprint"
    assert worker.answer(path) == b"abc_DEF-1.thumbprint"
    assert here.answer(b"/.well-known/acme-challenge/other") is None
    assert here.answer(b"/index.html") is None
    ordering.clear()
    assert worker.answer(path) is None and here.answer(path) is None


def test_the_tls_alpn01_certificate_has_the_name_and_the_critical_acme_identifier() -> None:
    pem = validation_certificate("example.test", "token.thumbprint")
    certificate = x509.load_pem_x509_certificate(pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["example.test"]
    extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert extension.critical
    assert extension.value.value == acme_identifier_value("token.thumbprint")
    assert len(acme_identifier_value("x")) == 34  # OCTET STRING, 32 bytes


def test_tls_alpn01_answers_only_for_the_sections_names(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.ensure()
    answers = Answers(storage, ["example.test"])
    answers.add_alpn("example.test", "t.k")
    assert isinstance(answers.alpn("example.test"), SSL.Context)
    other = Answers(Storage(str(tmp_path)), ["example.test"])
    assert isinstance(other.alpn("example.test"), SSL.Context)  # from storage
    assert other.alpn("unknown.test") is None


# Registration.


class FakeClient:
    """What proxyd.acme.client._account uses of acme.client.ClientV2: the directory,
    new_account (recorded) and the network's account."""

    def __init__(self) -> None:
        self.directory = messages.Directory.from_json({"newAccount": "https://ca.test/new-acct"})
        self.net = SimpleNamespace(account=None)
        self.registered: list[messages.NewRegistration] = []

    def new_account(self, registration: messages.NewRegistration) -> Any:
        self.registered.append(registration)
        return messages.RegistrationResource(uri="https://ca.test/acct/1", body=registration)


def test_a_new_account_is_registered_with_the_external_account_binding(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "acme"))
    storage.ensure()
    account_key = josepy.JWKEC(key=storage.account_key())
    fake = FakeClient()
    acme = config(tmp_path, eab_kid="kid-1", eab_hmac_key=MAC_KEY)
    client._account(fake, account_key, storage, acme)  # type: ignore[arg-type]
    (registration,) = fake.registered
    assert registration.terms_of_service_agreed
    binding = jws.JWS.from_json(registration.external_account_binding)
    # RFC 8555 7.3.4: the account's public key, MACed (HS256) with the CA's key under its kid,
    # for the newAccount URL.
    header = binding.signature.combined
    assert (header.alg, header.kid, header.url) == (
        josepy.HS256,
        "kid-1",
        "https://ca.test/new-acct",
    )
    assert json.loads(binding.payload) == account_key.public_key().to_partial_json()
    assert binding.verify(josepy.JWKOct(key=josepy.b64decode(MAC_KEY)))
    assert not binding.verify(josepy.JWKOct(key=b"another key of thirty-two bytes!"))
    assert storage.account_url() == "https://ca.test/acct/1"


def test_a_stored_account_is_used_without_registering_or_binding(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "acme"))
    storage.ensure()
    storage.save_account_url("https://ca.test/acct/7")
    fake = FakeClient()
    acme = config(tmp_path, eab_kid="kid-1", eab_hmac_key=MAC_KEY)
    account_key = josepy.JWKEC(key=storage.account_key())
    client._account(fake, account_key, storage, acme)  # type: ignore[arg-type]
    assert fake.registered == []
    assert fake.net.account.uri == "https://ca.test/acct/7"


def test_without_a_binding_the_registration_has_none(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "acme"))
    storage.ensure()
    fake = FakeClient()
    account_key = josepy.JWKEC(key=storage.account_key())
    client._account(fake, account_key, storage, config(tmp_path))  # type: ignore[arg-type]
    (registration,) = fake.registered
    assert registration.external_account_binding is None
    assert "externalAccountBinding" not in registration.to_partial_json()


# The service on a fake CA.


class FakeCA:
    """Issues certificates for `lifetime` seconds from the clock's now; fails `failing`
    times first."""

    def __init__(self, clock: Clock, lifetime: float, failing: int = 0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.failing = failing
        self.orders = 0
        self.ca = TestCA()

    def __call__(
        self,
        acme: AcmeConfig,
        storage: Storage,
        hooks: client.ChallengeHooks,
        stopping: threading.Event,
    ) -> client.Issued:
        self.orders += 1
        hooks.add_http("token", "token.key")
        hooks.clear()
        if self.failing:
            self.failing -= 1
            raise RuntimeError("CA unreachable")
        start = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        issued = self.ca.issue(
            list(acme.names),
            not_before=start - datetime.timedelta(seconds=1),
            not_after=start + datetime.timedelta(seconds=self.lifetime),
        )
        return client.Issued(issued.pem(with_key=False), issued.key)


def started(
    tmp_path: Path, fake: FakeCA, reactor: MemoryReactorClock, **changes: object
) -> AcmeService:
    acme = config(tmp_path, retry_min=60.0, **changes)
    service = AcmeService(reactor, {"site": acme}, obtain=fake, threaded=False)
    service.startService()
    return service


def real_time_clock() -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.advance(datetime.datetime.now(datetime.UTC).timestamp())
    return reactor


def test_the_service_orders_renews_when_due_and_swaps_the_listeners_certificate(
    tmp_path: Path,
) -> None:
    reactor = real_time_clock()
    fake = FakeCA(reactor, lifetime=3 * DAY)
    service = started(tmp_path, fake, reactor)
    tls_config = TlsServerConfig((), (), acme=service.sections["site"].config)
    listener = ServerTls("https public", tls_config, [b"http/1.1"])
    service.attach(listener)
    assert listener.certificates[0].path == "(acme: pending)"
    reactor.advance(0)
    assert fake.orders == 1
    first = listener.certificates[0]
    assert first.names == ("example.test", "www.example.test")
    reactor.advance(1.9 * DAY)  # due at 2 days, less up to 0.1 day of jitter
    assert fake.orders == 1
    reactor.advance(0.1 * DAY)
    assert fake.orders == 2
    assert listener.certificates[0].leaf.serial_number != first.leaf.serial_number
    service.stopService()


def test_a_stored_valid_certificate_is_served_without_an_order(tmp_path: Path) -> None:
    reactor = real_time_clock()
    fake = FakeCA(reactor, lifetime=90 * DAY)
    first = started(tmp_path, fake, reactor)
    reactor.advance(1)
    first.stopService()
    assert fake.orders == 1
    again = started(tmp_path, fake, reactor)
    reactor.advance(DAY)
    assert fake.orders == 1
    assert again.sections["site"].current is not None
    again.stopService()


def test_a_stored_certificate_for_other_names_is_replaced(tmp_path: Path) -> None:
    reactor = real_time_clock()
    fake = FakeCA(reactor, lifetime=90 * DAY)
    first = started(tmp_path, fake, reactor, names=("example.test",))
    reactor.advance(0)
    first.stopService()
    again = started(tmp_path, fake, reactor)
    reactor.advance(0)
    assert fake.orders == 2
    current = again.sections["site"].current
    assert current is not None and current.names == ("example.test", "www.example.test")
    again.stopService()


def test_failed_orders_back_off_exponentially(tmp_path: Path) -> None:
    reactor = real_time_clock()
    fake = FakeCA(reactor, lifetime=90 * DAY, failing=3)
    service = started(tmp_path, fake, reactor)
    reactor.advance(0)
    assert fake.orders == 1
    for wait, orders in ((60, 2), (120, 3), (240, 4)):
        reactor.advance(wait - 1)
        assert fake.orders == orders - 1
        reactor.advance(1)
        assert fake.orders == orders
    assert service.sections["site"].current is not None
    service.stopService()


def test_a_worker_never_orders_and_loads_what_the_master_stored(tmp_path: Path) -> None:
    reactor = real_time_clock()
    fake = FakeCA(reactor, lifetime=90 * DAY)
    acme = config(tmp_path)
    worker = AcmeService(reactor, {"site": acme}, order=False, obtain=fake, threaded=False)
    worker.startService()
    listener = ServerTls("https public", TlsServerConfig((), (), acme=acme), [b"http/1.1"])
    worker.attach(listener)
    reactor.advance(DAY)
    assert fake.orders == 0
    master = started(tmp_path, fake, reactor)
    reactor.advance(0)
    worker.reload_stored("site")
    assert listener.certificates[0].names == ("example.test", "www.example.test")
    master.stopService()
    worker.stopService()


def test_the_figures_follow_each_order_its_result_and_the_next_plan(tmp_path: Path) -> None:
    reactor = real_time_clock()
    start = reactor.seconds()
    fake = FakeCA(reactor, lifetime=3 * DAY, failing=1)
    landing: list[tuple[Deferred[client.Issued], tuple[Any, ...]]] = []

    def obtain(*arguments: Any) -> Deferred[client.Issued]:
        landing.append((Deferred(), arguments))
        return landing[-1][0]

    def land() -> None:
        ordered, arguments = landing.pop()
        try:
            ordered.callback(fake(*arguments))
        except RuntimeError as e:
            ordered.errback(e)

    acme = config(tmp_path, retry_min=60.0)
    service = AcmeService(reactor, {"site": acme}, obtain=obtain, threaded=False)
    service.startService()
    none = {"success": 0, "failure": 0}
    assert service.figures() == {"site": {"orders": none, "failures": 0, "next_attempt": start}}
    reactor.advance(0)  # the order runs: nothing planned
    assert service.figures() == {"site": {"orders": none, "failures": 0, "last_attempt": start}}
    land()  # the CA unreachable: a retry in retry_min
    assert service.figures() == {
        "site": {
            "orders": {"success": 0, "failure": 1},
            "failures": 1,
            "last_attempt": start,
            "next_attempt": start + 60,
        }
    }
    reactor.advance(60)
    land()
    section = service.sections["site"]
    assert section.current is not None
    expiry = section.current.not_after.timestamp()
    assert expiry == pytest.approx(start + 60 + 3 * DAY, abs=1)  # notAfter in whole seconds
    figures = service.figures()["site"]
    assert figures == {
        "orders": {"success": 1, "failure": 1},
        "failures": 0,
        "expiry": expiry,
        "last_attempt": start + 60,
        "next_attempt": figures["next_attempt"],
    }
    # Due a third of its lifetime ahead, less up to a tenth of that of jitter.
    assert expiry - 1.1 * DAY <= figures["next_attempt"] <= expiry - DAY
    service.stopService()
    assert "next_attempt" not in service.figures()["site"]


def test_a_section_changed_by_a_reload_counts_on_and_a_worker_shows_no_figures(
    tmp_path: Path,
) -> None:
    reactor = real_time_clock()
    fake = FakeCA(reactor, lifetime=90 * DAY)
    service = started(tmp_path, fake, reactor)
    reactor.advance(0)
    assert service.figures()["site"]["orders"] == {"success": 1, "failure": 0}
    service.reload({"site": config(tmp_path, retry_min=60.0, names=("example.test",))})
    figures = service.figures()["site"]
    assert figures["orders"] == {"success": 1, "failure": 0}
    assert figures["last_attempt"] == reactor.seconds()
    service.stopService()
    worker = AcmeService(reactor, {"site": config(tmp_path)}, order=False, threaded=False)
    worker.startService()
    assert worker.sections["site"].current is not None  # loaded from storage
    assert worker.figures() == {}
    worker.stopService()


# Configuration.


def test_an_https_listener_may_take_its_certificate_from_an_acme_section(tmp_path: Path) -> None:
    text = f"""
[acme site]
names = Example.test www.example.test
storage = {tmp_path}/acme
contact = ops@example.test

[pool web]
servers = 127.0.0.1:9

[https public]
listen = tcp:8443
acme = site
routes =
    path / -> pool web
"""
    loaded = loads(text, str(tmp_path / "proxyd.ini"))
    acme = loaded.acme["site"]
    assert acme.names == ("example.test", "www.example.test")
    assert acme.contact == ("mailto:ops@example.test",)
    assert acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    tls = loaded.http[0].tls
    assert tls is not None and tls.acme == acme and tls.loaded == ()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("names = *.example.test", "wildcards need the dns-01 challenge"),
        ("names = 10.0.0.1", "expected DNS names such as example.com"),
        ("challenges = dns-01", "expected challenge types http-01 and/or tls-alpn-01"),
        ("directory = http://ca.test/dir", "expected an https:// URL of an ACME directory"),
        ("contact = nobody", "expected mailto: addresses"),
    ],
)
def test_acme_values_are_checked(tmp_path: Path, line: str, expected: str) -> None:
    if not line.startswith("names"):
        line = "names = example.test\n" + line
    text = f"[acme site]\nstorage = x\n{line}\n"
    with pytest.raises(Exception) as info:
        loads(text, str(tmp_path / "proxyd.ini"))
    assert expected in str(info.value)


def eab_config(tmp_path: Path, lines: str) -> str:
    return f"[acme site]\nnames = example.test\nstorage = {tmp_path}/acme\n{lines}"


def test_an_external_account_binding_is_read_and_its_key_kept_secret(tmp_path: Path) -> None:
    text = eab_config(tmp_path, f"eab_kid = kid-1\neab_hmac_key = {MAC_KEY}=\n")
    loaded = loads(text, str(tmp_path / "proxyd.ini"))
    acme = loaded.acme["site"]
    assert (acme.eab_kid, acme.eab_hmac_key) == ("kid-1", MAC_KEY)  # the padding dropped
    assert MAC_KEY not in repr(acme) and MAC_KEY not in repr(loaded)
    shown = config_document(loaded)["acme"]["site"]
    assert shown["eab_kid"] == "kid-1" and shown["eab_hmac_key"] == "********"
    assert MAC_KEY not in json.dumps(config_document(loaded))
    unbound = config_document(loads(eab_config(tmp_path, ""), "p"))
    assert unbound["acme"]["site"]["eab_hmac_key"] is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            "eab_kid = kid-1\n",
            "4: [acme site] eab_kid: expected 'eab_hmac_key' too (an external"
            " account binding takes both); found eab_kid alone",
        ),
        (
            f"eab_hmac_key = {MAC_KEY}\n",
            "4: [acme site] eab_hmac_key: expected 'eab_kid' too (an external"
            " account binding takes both); found eab_hmac_key alone",
        ),
        (
            f"eab_kid = kid-1\neab_hmac_key = {MAC_KEY[:-4]}+/Ab\n",
            "5: [acme site] eab_hmac_key: expected the base64url MAC key the CA gave"
            " (letters, digits, - and _); found other characters (standard base64's + and /"
            " are - and _)",
        ),
        (
            f"eab_kid = kid-1\neab_hmac_key = {MAC_KEY}xx\n",
            "5: [acme site] eab_hmac_key: expected the base64url MAC key the CA gave"
            " (letters, digits, - and _); found 45 characters, a length base64 cannot have",
        ),
        (
            f"eab_kid = kid 1\neab_hmac_key = {MAC_KEY}\n",
            "4: [acme site] eab_kid: expected the key identifier the CA gave"
            " (printable ASCII, no spaces); found 'kid 1'",
        ),
    ],
)
def test_external_account_binding_errors_never_show_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str, expected: str
) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_text(eab_config(tmp_path, lines))
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"{path}:{expected}" in err.splitlines()
    assert MAC_KEY[:-4] not in out + err
