"""The JWKS key source on a task.Clock with a fake fetch whose Deferreds the tests fire:
parsing, caching, periodic and on-demand refreshes, rate limiting, failures, logs, stop."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from joserfc.util import urlsafe_b64encode
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from proxyd.auth.jwks import MAX_SIZE, InvalidDocument, Jwks, parse_key_set, redacted, validate_url
from proxyd.config.errors import Invalid

URL = "https://idp.test/.well-known/jwks.json"
REFRESH = 300.0
MIN_REFRESH = 10.0
TIMEOUT = 5.0

RSA_1 = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})
RSA_2 = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
EC_1 = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED_1 = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})


def document(*keys: RSAKey | ECKey | OKPKey, extra: list[dict[str, Any]] | None = None) -> bytes:
    entries = [key.as_dict(private=False) for key in keys] + (extra or [])
    return json.dumps({"keys": entries}).encode()


def b64(number: int) -> str:
    return urlsafe_b64encode(number.to_bytes((number.bit_length() + 7) // 8)).decode()


def kids(key_set: KeySet | None) -> list[str | None]:
    assert key_set is not None
    return [key.kid for key in key_set]


class FakeFetch:
    """Records each fetch; the test fires its Deferred."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[bytes]]] = []

    def __call__(self, url: str) -> Deferred[bytes]:
        fetching: Deferred[bytes] = Deferred()
        self.calls.append((url, fetching))
        return fetching

    @property
    def pending(self) -> Deferred[bytes]:
        return self.calls[-1][1]

    def answer(self, body: bytes) -> None:
        self.pending.callback(body)

    def refuse(self) -> None:
        self.pending.errback(ConnectionRefusedError("connection refused"))


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_000_000)
    return clock


@pytest.fixture
def fetch() -> FakeFetch:
    return FakeFetch()


@pytest.fixture
def logs() -> Iterator[Sequence[LogEvent]]:
    with capturedLogs() as events:
        yield events


def make_jwks(fetch: FakeFetch, clock: Clock, url: str = URL) -> Jwks:
    return Jwks(
        url,
        fetch,
        clock,
        refresh_interval=REFRESH,
        min_refresh_interval=MIN_REFRESH,
        timeout=TIMEOUT,
    )


def started(fetch: FakeFetch, clock: Clock, *keys: RSAKey | ECKey | OKPKey) -> Jwks:
    jwks = make_jwks(fetch, clock)
    jwks.start()
    fetch.answer(document(*keys))
    return jwks


def warnings(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]


def infos(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]


def result_of(waiting: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    waiting.addBoth(results.append)
    return results


# validate_url


@pytest.mark.parametrize(
    "url", [URL, "http://127.0.0.1:8080/keys", "https://[::1]/jwks", "HTTPS://idp.test/k"]
)
def test_validate_url_accepts_http_and_https_urls_with_a_host(url: str) -> None:
    assert validate_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["ftp://idp.test/jwks", "https:///jwks", "https://idp.test:99999/", "https://idp .test/", ""],
)
def test_validate_url_refuses_other_schemes_missing_hosts_bad_ports_and_spaces(url: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate_url(url)
    assert caught.value.expected == "an http:// or https:// URL with a host"
    assert caught.value.found == repr(url)


def test_validate_url_suggests_https_for_a_url_without_scheme() -> None:
    with pytest.raises(Invalid) as caught:
        validate_url("idp.test/jwks")
    assert caught.value.hint == "did you mean 'https://idp.test/jwks'?"


def test_redacted_url_drops_user_info_query_and_fragment() -> None:
    assert redacted("https://user:secret@idp.test:8443/jwks?token=abc#x") == (
        "https://idp.test:8443/jwks"
    )


# parse_key_set


def test_parse_key_set_reads_rsa_ec_and_okp_keys_by_kid() -> None:
    key_set = parse_key_set(document(RSA_1, EC_1, ED_1))
    assert kids(key_set) == ["rsa-1", "ec-1", "ed-1"]
    assert [key.key_type for key in key_set] == ["RSA", "EC", "OKP"]


def test_parse_key_set_keeps_only_the_public_part_of_a_private_key() -> None:
    body = json.dumps({"keys": [RSA_1.as_dict(private=True)]}).encode()
    (key,) = parse_key_set(body)
    assert not key.is_private
    assert "d" not in key.as_dict()
    assert key.kid == "rsa-1"


def test_parse_key_set_skips_encryption_symmetric_unknown_and_weak_keys() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    weak_key = {"kty": "RSA", "kid": "weak", "n": b64(weak.public_numbers().n), "e": "AQAB"}
    extra: list[dict[str, Any]] = [
        {**EC_1.as_dict(private=False), "kid": "enc-1", "use": "enc"},
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "hmac"},
        {"kty": "ML-DSA", "kid": "post-quantum", "pub": "AAAA"},
        weak_key,
    ]
    assert kids(parse_key_set(document(RSA_1, extra=extra))) == ["rsa-1"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'{"keys": {}}', 'not a JSON object with a "keys" list'),
        (b'["keys"]', 'not a JSON object with a "keys" list'),
        (b'{"keys": ["rsa"]}', "key 0 is not a JSON object"),
        (b'{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}', "key 0 rejected (Error)"),
        (b'{"keys": [{"kty": "EC", "crv": "P-999", "x": "a", "y": "b"}]}', "key 0 rejected"),
        (b'{"keys": []}', "no signing key"),
        (b'{"keys": [{"kty": "EC", "use": "enc"}]}', "no signing key"),
    ],
)
def test_parse_key_set_refuses_unusable_documents_saying_why(body: bytes, why: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        parse_key_set(body)
    assert str(caught.value).startswith(why)


def test_parse_key_set_refuses_a_document_over_max_size_before_parsing_it() -> None:
    body = document(RSA_1)
    assert parse_key_set(body, max_size=len(body))
    with pytest.raises(InvalidDocument, match=f"larger than {len(body) - 1} bytes"):
        parse_key_set(body, max_size=len(body) - 1)
    assert MAX_SIZE == 1024 * 1024


# fetching, caching, refreshing


def test_no_key_set_before_the_first_fetch_succeeds(fetch: FakeFetch, clock: Clock) -> None:
    jwks = make_jwks(fetch, clock)
    assert jwks.key_set is None
    jwks.start()
    assert [url for url, _ in fetch.calls] == [URL]
    assert jwks.key_set is None
    fetch.answer(document(RSA_1))
    assert kids(jwks.key_set) == ["rsa-1"]


def test_keys_are_refreshed_every_refresh_interval(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(REFRESH - 1)
    assert len(fetch.calls) == 1
    clock.advance(1)
    assert len(fetch.calls) == 2
    fetch.answer(document(RSA_2))
    assert kids(jwks.key_set) == ["rsa-2"]
    clock.advance(REFRESH)
    assert len(fetch.calls) == 3


def test_without_any_keys_a_failed_fetch_is_retried_after_min_refresh_interval(
    fetch: FakeFetch, clock: Clock
) -> None:
    jwks = make_jwks(fetch, clock)
    jwks.start()
    fetch.refuse()
    clock.advance(MIN_REFRESH)
    assert len(fetch.calls) == 2
    fetch.answer(document(RSA_1))
    clock.advance(REFRESH - 1)
    assert len(fetch.calls) == 2
    assert kids(jwks.key_set) == ["rsa-1"]


def test_stop_cancels_the_periodic_refresh(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1)
    assert len(clock.getDelayedCalls()) == 1
    jwks.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(REFRESH * 3)
    assert len(fetch.calls) == 1


def test_stop_cancels_a_fetch_in_flight_quietly_and_answers_its_waiters(
    fetch: FakeFetch, clock: Clock, logs: Sequence[LogEvent]
) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    waiting = jwks.get("rsa-2")
    assert isinstance(waiting, Deferred)
    results = result_of(waiting)
    jwks.stop()
    assert kids(results[0]) == ["rsa-1"]
    assert warnings(logs) == []
    assert clock.getDelayedCalls() == []
    assert jwks.get("rsa-3") is jwks.key_set
    assert len(fetch.calls) == 2


def test_a_known_kid_is_answered_at_once_without_a_fetch(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1, EC_1)
    clock.advance(MIN_REFRESH)
    assert jwks.get("ec-1") is jwks.key_set
    assert jwks.get(None) is jwks.key_set
    assert len(fetch.calls) == 1


def test_an_unknown_kid_refreshes_and_waits_for_the_rotated_keys(
    fetch: FakeFetch, clock: Clock, logs: Sequence[LogEvent]
) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    waiting = jwks.get("rsa-2")
    assert isinstance(waiting, Deferred)
    results = result_of(waiting)
    assert len(fetch.calls) == 2
    assert results == []
    fetch.answer(document(RSA_1, RSA_2))
    assert kids(results[0]) == ["rsa-1", "rsa-2"]
    assert "JWKS https://idp.test/.well-known/jwks.json: 2 keys, 1 new, 0 gone" in infos(logs)


def test_an_unknown_kid_within_min_refresh_interval_is_answered_with_the_keys_there_are(
    fetch: FakeFetch, clock: Clock
) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    first = jwks.get("rsa-2")
    assert isinstance(first, Deferred)
    fetch.answer(document(RSA_1))
    clock.advance(MIN_REFRESH - 1)
    assert jwks.get("rsa-2") is jwks.key_set
    assert jwks.get("rsa-3") is jwks.key_set
    assert len(fetch.calls) == 2
    clock.advance(1)
    assert isinstance(jwks.get("rsa-2"), Deferred)
    assert len(fetch.calls) == 3


def test_the_first_fetch_counts_for_the_rate_limit(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH - 1)
    assert jwks.get("rsa-2") is jwks.key_set
    assert len(fetch.calls) == 1


def test_concurrent_unknown_kids_share_one_fetch(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    waiting = [jwks.get("rsa-2"), jwks.get("rsa-2"), jwks.get("ec-1")]
    assert all(isinstance(w, Deferred) for w in waiting)
    results = [result_of(w) for w in waiting if isinstance(w, Deferred)]
    assert len(fetch.calls) == 2
    fetch.answer(document(RSA_2, EC_1))
    assert [kids(r[0]) for r in results] == [["rsa-2", "ec-1"]] * 3


def test_an_unknown_kid_joins_the_periodic_fetch_in_flight(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(REFRESH)
    assert len(fetch.calls) == 2
    waiting = jwks.get("rsa-2")
    assert isinstance(waiting, Deferred)
    assert len(fetch.calls) == 2
    results = result_of(waiting)
    fetch.answer(document(RSA_2))
    assert kids(results[0]) == ["rsa-2"]


def test_the_periodic_refresh_does_not_start_a_second_fetch_while_one_is_in_flight(
    fetch: FakeFetch, clock: Clock
) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(REFRESH - 1)
    assert isinstance(jwks.get("rsa-2"), Deferred)
    clock.advance(1)
    assert len(fetch.calls) == 2
    fetch.answer(document(RSA_2))
    clock.advance(REFRESH - 1)
    assert len(fetch.calls) == 2
    clock.advance(1)
    assert len(fetch.calls) == 3


def test_a_cancelled_waiter_leaves_the_others_waiting(fetch: FakeFetch, clock: Clock) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    gone, staying = jwks.get("rsa-2"), jwks.get("rsa-2")
    assert isinstance(gone, Deferred) and isinstance(staying, Deferred)
    gone_results, staying_results = result_of(gone), result_of(staying)
    gone.cancel()
    assert gone_results[0].check(CancelledError)
    fetch.answer(document(RSA_2))
    assert kids(staying_results[0]) == ["rsa-2"]


def test_a_fetch_that_answers_at_once_is_answered_at_once(clock: Clock) -> None:
    jwks = Jwks(URL, lambda url: succeed(document(RSA_1)), clock)
    assert kids(jwks.get("rsa-1")) == ["rsa-1"]  # type: ignore[arg-type]


def test_before_any_keys_and_within_min_refresh_interval_get_answers_none(
    fetch: FakeFetch, clock: Clock
) -> None:
    jwks = make_jwks(fetch, clock)
    jwks.start()
    fetch.refuse()
    assert jwks.get("rsa-1") is None
    assert len(fetch.calls) == 1


# failures


def test_a_failed_fetch_keeps_the_old_keys_and_is_logged_once_per_streak(
    fetch: FakeFetch, clock: Clock, logs: Sequence[LogEvent]
) -> None:
    jwks = started(fetch, clock, RSA_1)
    for _ in range(3):
        clock.advance(REFRESH)
        fetch.refuse()
        assert kids(jwks.key_set) == ["rsa-1"]
    assert warnings(logs) == [
        f"JWKS {URL} could not be fetched (ConnectionRefusedError: Connection was refused by "
        "other side: connection refused.); keeping 1 keys"
    ]
    clock.advance(REFRESH)
    fetch.answer(document(RSA_1))
    assert f"JWKS {URL} fetched again: 1 keys" in infos(logs)
    clock.advance(REFRESH)
    fetch.refuse()
    assert len(warnings(logs)) == 2


def test_an_invalid_document_keeps_the_old_keys(
    fetch: FakeFetch, clock: Clock, logs: Sequence[LogEvent]
) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    waiting = jwks.get("rsa-2")
    assert isinstance(waiting, Deferred)
    results = result_of(waiting)
    fetch.answer(b'{"keys": "rotated"}')
    assert kids(results[0]) == ["rsa-1"]
    assert kids(jwks.key_set) == ["rsa-1"]
    assert warnings(logs) == [
        f"JWKS {URL} could not be fetched (invalid document: not a JSON object with a "
        '"keys" list); keeping 1 keys'
    ]


def test_a_document_over_max_size_keeps_the_old_keys(fetch: FakeFetch, clock: Clock) -> None:
    jwks = Jwks(URL, fetch, clock, max_size=len(document(RSA_1)))
    jwks.start()
    fetch.answer(document(RSA_1))
    clock.advance(300)
    fetch.answer(document(RSA_1, RSA_2))
    assert kids(jwks.key_set) == ["rsa-1"]


def test_a_fetch_without_answer_is_cancelled_after_timeout_and_its_waiters_answered(
    fetch: FakeFetch, clock: Clock, logs: Sequence[LogEvent]
) -> None:
    jwks = started(fetch, clock, RSA_1)
    clock.advance(MIN_REFRESH)
    waiting = jwks.get("rsa-2")
    assert isinstance(waiting, Deferred)
    results = result_of(waiting)
    clock.advance(TIMEOUT - 0.5)
    assert results == []
    clock.advance(0.5)
    assert kids(results[0]) == ["rsa-1"]
    assert warnings(logs) == [
        f"JWKS {URL} could not be fetched (no answer within 5s); keeping 1 keys"
    ]
    fetch.answer(document(RSA_2))  # a late answer is ignored
    assert kids(jwks.key_set) == ["rsa-1"]


def test_a_fetch_function_that_raises_counts_as_a_failure(
    clock: Clock, logs: Sequence[LogEvent]
) -> None:
    def broken(url: str) -> Deferred[bytes]:
        raise RuntimeError("no agent")

    jwks = Jwks(URL, broken, clock)
    assert jwks.get("rsa-1") is None
    assert warnings(logs) == [
        f"JWKS {URL} could not be fetched (RuntimeError: no agent); keeping 0 keys"
    ]


def test_logs_name_the_url_without_its_secrets(
    fetch: FakeFetch, clock: Clock, logs: Sequence[LogEvent]
) -> None:
    jwks = make_jwks(fetch, clock, url="https://me:hunter2@idp.test/jwks?key=s3cret")
    jwks.start()
    fetch.refuse()
    (line,) = warnings(logs)
    assert "https://idp.test/jwks could not be fetched" in line
    assert "hunter2" not in line and "s3cret" not in line
    assert logs[-1]["url"] == "https://idp.test/jwks"


def test_intervals_are_validated() -> None:
    with pytest.raises(ValueError, match="min_refresh_interval <= refresh_interval"):
        Jwks(URL, FakeFetch(), Clock(), refresh_interval=5, min_refresh_interval=10)
    with pytest.raises(ValueError, match="timeout"):
        Jwks(URL, FakeFetch(), Clock(), timeout=0)
