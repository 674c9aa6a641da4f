"""OCSP stapling's fetches and timers (proxyd.ocsp_stapling) over a Clock and a fake POST,
and the staple in a real (in-memory) handshake through ServerTls."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp as x509_ocsp
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from proxyd.admin.metrics import metrics_registry
from proxyd.admin.status import status_document
from proxyd.app import ProxydService
from proxyd.config.load import loads
from proxyd.config.model import Config
from proxyd.ocsp_stapling import OcspStapling
from proxyd.tls import ServerTls
from tests.certs import Issued, TestCA
from tests.unit.test_tls import FakeProtocol, handshake

URL = "http://127.0.0.1:9/ocsp"
HOUR = 3600.0


class Responder:
    """The fake POST: answers with `answer` (DER bytes, or an exception to fail with), or
    holds the request when `hold` is set; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes]] = []
        self.answer: bytes | Exception = b""
        self.hold = False
        self.held: list[Deferred[bytes]] = []

    def __call__(self, url: str, body: bytes) -> Deferred[bytes]:
        self.asked.append((url, body))
        if self.hold:
            self.held.append(Deferred())
            return self.held[-1]
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def site(ca: TestCA) -> Issued:
    issued = ca.issue(["a.test"], ocsp_url=URL)
    issued.chain = (ca.cert,)
    return issued


def config(tmp_path: Path, *issued: Issued, extra: str = "") -> Config:
    lines = ""
    for index, one in enumerate(issued):
        one.write(tmp_path / f"{index}.pem")
        lines += f"    {index}.pem\n"
    return loads(
        "[pool p]\nservers = 127.0.0.1:1\n[https h]\nlisten = tcp:0\n"
        f"certificates =\n{lines}routes =\n    path / -> pool p\n{extra}",
        str(tmp_path / "proxyd.ini"),
    )


def clock_at(moment: datetime.datetime) -> Clock:
    clock = Clock()
    clock.advance(moment.timestamp())
    return clock


def now_utc(clock: Clock) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)


def started(clock: Clock, responder: Responder, cfg: Config) -> OcspStapling:
    stapling = OcspStapling(clock, responder)
    stapling.serve(cfg)
    stapling.start()
    return stapling


def only_key(stapling: OcspStapling) -> Any:
    (key,) = stapling.entries
    return key


def messages(logged: list[Any]) -> list[str]:
    return [formatEvent(event) for event in logged if "OCSP" in formatEvent(event)]


def test_a_good_response_is_stapled_and_refetched_halfway(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    responder.answer = ca.ocsp_response(
        site, this_update=now_utc(clock), lifetime=datetime.timedelta(hours=12)
    )
    stapling = started(clock, responder, config(tmp_path, site))
    key = only_key(stapling)
    assert [url for url, _ in responder.asked] == [URL]
    assert stapling.staple(key) == responder.answer
    clock.advance(6 * HOUR - 1)
    assert len(responder.asked) == 1
    clock.advance(1)
    assert len(responder.asked) == 2
    assert stapling.figures() == {"certificates": 1, "stapled": 1, "fetches": 2, "failed": 0}


def test_nothing_is_stapled_before_the_answer_and_nothing_waits_for_it(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    responder.hold = True
    stapling = started(clock, responder, config(tmp_path, site))
    key = only_key(stapling)
    assert stapling.staple(key) == b""
    der = ca.ocsp_response(site, this_update=now_utc(clock))
    responder.held[0].callback(der)
    assert stapling.staple(key) == der


def test_a_responder_down_is_logged_once_per_streak_and_retried_with_backoff(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    responder.answer = ConnectionRefusedError()
    with capturedLogs() as logged:
        stapling = started(clock, responder, config(tmp_path, site))
        for delay in (60, 120, 240, 480):
            clock.advance(delay - 1)
            count = len(responder.asked)
            clock.advance(1)
            assert len(responder.asked) == count + 1
        lines = messages(logged)
        assert len(lines) == 1
        assert URL in lines[0] and "no staple" in lines[0] and "retrying" in lines[0]
        responder.answer = ca.ocsp_response(site, this_update=now_utc(clock))
        clock.advance(960)
        assert stapling.staple(only_key(stapling)) == responder.answer
        lines = messages(logged)
        assert len(lines) == 2 and "again after 5 failed attempts" in lines[1]
    assert stapling.figures()["failed"] == 5


def test_a_failed_refresh_keeps_the_valid_response_until_it_expires(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    good = ca.ocsp_response(site, this_update=now_utc(clock), lifetime=datetime.timedelta(hours=4))
    responder.answer = good
    stapling = started(clock, responder, config(tmp_path, site))
    key = only_key(stapling)
    responder.answer = ConnectionRefusedError()
    with capturedLogs() as logged:
        clock.advance(2 * HOUR)  # the refresh, which fails
        assert stapling.staple(key) == good
        clock.advance(2 * HOUR - 1)
        assert stapling.staple(key) == good
        clock.advance(1)
        assert stapling.staple(key) == b""
    lines = messages(logged)
    assert "the response held until it expires" in lines[0]
    assert "has expired" in lines[-1]


def test_a_revocation_drops_the_good_response_at_once(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    responder.answer = ca.ocsp_response(site, this_update=now_utc(clock))
    stapling = started(clock, responder, config(tmp_path, site))
    key = only_key(stapling)
    responder.answer = ca.ocsp_response(
        site, x509_ocsp.OCSPCertStatus.REVOKED, this_update=now_utc(clock)
    )
    with capturedLogs() as logged:
        clock.advance(24 * HOUR)
    assert stapling.staple(key) == b""
    (line,) = messages(logged)
    assert "revoked" in line and "not stapled" in line


def test_a_reload_keeps_the_responses_of_the_certificates_it_still_serves(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    responder.answer = ca.ocsp_response(site, this_update=now_utc(clock))
    stapling = started(clock, responder, config(tmp_path, site))
    key = only_key(stapling)
    stapling.serve(config(tmp_path, site, extra="tls_session_tickets = off\n"))
    assert len(responder.asked) == 1 and stapling.staple(key) == responder.answer
    other = ca.issue(["b.test"], ocsp_url=URL)
    other.chain = (ca.cert,)
    stapling.serve(config(tmp_path, other))
    assert key not in stapling.entries and len(stapling.entries) == 1
    assert len(responder.asked) == 2
    assert clock.getDelayedCalls() and all(
        call.active() for call in clock.getDelayedCalls()
    )  # the forgotten entry's timers are cancelled, the new one's remain


def test_ocsp_stapling_off_or_no_responder_fetches_nothing(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = Clock()
    responder = Responder()
    started(clock, responder, config(tmp_path, site, extra="ocsp_stapling = off\n"))
    plain = ca.issue(["b.test"])
    plain.chain = (ca.cert,)
    started(clock, responder, config(tmp_path, plain))
    assert responder.asked == []


def test_ocsp_responder_replaces_the_certificates_url(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    responder = Responder()
    responder.hold = True
    started(
        Clock(), responder, config(tmp_path, site, extra="ocsp_responder = http://ocsp.test/\n")
    )
    assert [url for url, _ in responder.asked] == ["http://ocsp.test/"]


def test_a_responder_without_the_issuer_in_the_file_is_warned_about(
    tmp_path: Path, ca: TestCA
) -> None:
    alone = ca.issue(["a.test"], ocsp_url=URL)
    responder = Responder()
    with capturedLogs() as logged:
        stapling = started(Clock(), responder, config(tmp_path, alone))
    assert stapling.entries == {} and responder.asked == []
    (line,) = messages(logged)
    assert "no issuer certificate after it" in line


def test_stop_cancels_the_fetch_in_flight_and_the_timers(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = Clock()
    responder = Responder()
    responder.hold = True
    stapling = started(clock, responder, config(tmp_path, site))
    stapling.stop()
    assert responder.held[0].called  # cancelled, and its failure not logged as a fetch failure
    assert clock.getDelayedCalls() == []
    assert stapling.figures()["failed"] == 0


def test_a_handshake_asking_for_the_status_gets_the_staple(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    clock = clock_at(datetime.datetime.now(datetime.UTC))
    responder = Responder()
    responder.hold = True
    other = ca.issue(["b.test"])  # no responder: never stapled
    other.chain = (ca.cert,)
    cfg = config(tmp_path, other, site)
    stapling = started(clock, responder, cfg)
    tls_config = cfg.http[0].tls
    assert tls_config is not None
    server = ServerTls("https h", tls_config, [b"http/1.1"], stapling)

    def staple_seen(name: bytes) -> bytes | None:
        seen: list[bytes] = []
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_ocsp_client_callback(lambda connection, data, _: seen.append(data) or True)
        client = SSL.Connection(ctx, None)
        client.set_connect_state()
        client.set_tlsext_host_name(name)
        client.request_ocsp()
        handshake(client, server.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
        return seen[0] if seen else None

    assert staple_seen(b"a.test") == b""  # nothing fetched yet: no staple
    der = ca.ocsp_response(site, this_update=now_utc(clock))
    responder.held[0].callback(der)
    assert staple_seen(b"a.test") == der
    assert staple_seen(b"b.test") in (None, b"")


def test_the_figures_are_metrics_once_the_process_staples(
    tmp_path: Path, ca: TestCA, site: Issued
) -> None:
    from prometheus_client.exposition import generate_latest

    clock = clock_at(datetime.datetime.now(datetime.UTC))
    service = ProxydService(clock, config(tmp_path, site))
    responder = Responder()
    responder.answer = ca.ocsp_response(site, this_update=now_utc(clock))
    service.ocsp.post = responder
    assert "ocsp" not in service.counters()  # not started: a master of workers fetches none
    service.ocsp.start()
    document = status_document(service, service.counters(), clock.seconds())
    text = generate_latest(metrics_registry(document)).decode()
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("proxyd_ocsp")
    }
    assert found == {
        "proxyd_ocsp_certificates": 1,
        "proxyd_ocsp_stapled": 1,
        "proxyd_ocsp_fetches_total": 1,
        "proxyd_ocsp_fetch_failures_total": 0,
    }
    service.ocsp.stop()
