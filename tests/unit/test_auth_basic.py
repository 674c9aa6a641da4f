"""proxyd.auth.basic: RFC 7617 credentials parsed strictly; checks off the reactor thread
(a fake pool the test runs by hand), coalesced, bounded and cached under a keyed hash."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from proxyd.auth.basic import BasicAuth, Credentials, challenge, parse_basic
from proxyd.auth.htpasswd import UserTable, parse_htpasswd
from proxyd.auth.result import Decision, Denied, Granted

CHALLENGE = ((b"WWW-Authenticate", b'Basic realm="proxyd", charset="UTF-8"'),)


def basic(user: str | bytes, password: str | bytes) -> bytes:
    """An Authorization value for `user` and `password` (str as UTF-8)."""
    raw_user = user.encode() if isinstance(user, str) else user
    raw_password = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(raw_user + b":" + raw_password)


@pytest.fixture(scope="module")
def table() -> UserTable:
    """alice, bob and carol (bcrypt at the lowest cost), each with the password 'pw-NAME'."""
    lines = [
        subprocess.run(
            ["htpasswd", "-nbB", "-C", "4", user, f"pw-{user}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for user in ("alice", "bob", "carol")
    ]
    return parse_htpasswd("\n".join(lines).encode(), "users.htpasswd")


class Pool:
    """A fake thread pool: queues each check until the test runs it."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], bool], Deferred[bool]]] = []
        self.ran = 0

    def __call__(self, work: Callable[[], bool]) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.queued.append((work, d))
        return d

    def run_all(self) -> None:
        while self.queued:
            work, d = self.queued.pop(0)
            self.ran += 1
            d.callback(work())


def make(
    table: UserTable,
    pool: Callable[[Callable[[], bool]], Deferred[bool]],
    clock: Clock | None = None,
    **options: object,
) -> BasicAuth:
    settings: dict[str, object] = {
        "realm": "proxyd",
        "cache_ttl": 30.0,
        "clock": clock or Clock(),
        "run_in_thread": pool,
        "max_pending": 8,
        "user_header": b"X-Auth-User",
    }
    settings.update(options)
    return BasicAuth(table, **settings)  # type: ignore[arg-type]


def result(answer: Decision | Deferred[Decision]) -> Decision:
    """The decision `answer` holds or has fired with; fails if it has not fired."""
    if not isinstance(answer, Deferred):
        return answer
    fired: list[object] = []
    answer.addBoth(fired.append)
    assert fired, "the check has not answered"
    assert isinstance(fired[0], Granted | Denied), fired[0]
    return fired[0]


# parse_basic


def test_parse_basic_reads_user_and_password_with_any_case_of_scheme() -> None:
    token = base64.b64encode(b"alice:open sesame")
    assert parse_basic(b"Basic " + token) == ("alice", b"open sesame")
    assert parse_basic(b"bAsIc   " + token + b" ") == ("alice", b"open sesame")


def test_parse_basic_splits_at_the_first_colon_so_a_password_may_hold_colons() -> None:
    assert parse_basic(basic("alice", "a:b::c")) == ("alice", b"a:b::c")
    assert parse_basic(basic("alice", "")) == ("alice", b"")


def test_parse_basic_decodes_the_user_as_utf8_else_latin1() -> None:
    assert parse_basic(basic("zoë", "pw")) == ("zoë", b"pw")
    assert parse_basic(basic(b"zo\xeb", "pw")) == ("zoë", b"pw")


def test_parse_basic_leaves_the_password_as_the_bytes_sent() -> None:
    assert parse_basic(basic("alice", b"caf\xe9")) == ("alice", b"caf\xe9")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Basic",
        b"Basic ",
        b"Bearer " + base64.b64encode(b"alice:pw"),
        b"Basicx " + base64.b64encode(b"alice:pw"),
        b"Basic YWxpY2U6cHc",  # no padding
        b"Basic YWxpY2U6cHc=!",
        b"Basic YWxp Y2U6cHc=",
        b"Basic " + base64.b64encode(b"alice:pw") + b" extra",
        b"Basic " + base64.b64encode(b"alicepw"),
        b"Basic " + base64.b64encode(b":pw"),
        b"Basic " + base64.b64encode(b"al\x00ice:pw"),
        b"Basic " + base64.b64encode(b"alice:p\nw"),
        b"Basic " + base64.b64encode(b"alice:p\x7fw"),
        b"Basic " + base64.b64encode("al\u0085ice:pw".encode()),
    ],
)
def test_parse_basic_refuses_what_is_not_well_formed_basic_credentials(value: bytes) -> None:
    assert parse_basic(value) is None


def test_credentials_repr_hides_the_password() -> None:
    credentials = parse_basic(basic("alice", "hunter2"))
    assert isinstance(credentials, Credentials)
    assert "hunter2" not in repr(credentials)
    assert "alice" in repr(credentials)


@given(st.binary(max_size=200))
def test_parse_basic_never_raises(value: bytes) -> None:
    parsed = parse_basic(value)
    assert parsed is None or isinstance(parsed, Credentials)


@given(
    st.text(min_size=1).filter(lambda u: ":" not in u and u.isprintable()),
    st.binary().filter(lambda p: not any(b < 0x20 or b == 0x7F for b in p)),
)
def test_parse_basic_reads_back_any_valid_credentials(user: str, password: bytes) -> None:
    assert parse_basic(basic(user, password)) == (user, password)


def test_the_challenge_quotes_the_realm() -> None:
    assert challenge('Dept "A" \\ B') == b'Basic realm="Dept \\"A\\" \\\\ B", charset="UTF-8"'
    with pytest.raises(ValueError):
        challenge("two\r\nlines")


# BasicAuth


def test_no_authorization_is_answered_401_missing_at_once(table: UserTable) -> None:
    pool = Pool()
    assert make(table, pool).check(None) == Denied(401, "missing", CHALLENGE)
    assert not pool.queued


def test_malformed_credentials_are_answered_401_malformed_at_once(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    assert auth.check(b"Basic !!!") == Denied(401, "malformed", CHALLENGE)
    assert auth.check(b"Bearer abc") == Denied(401, "malformed", CHALLENGE)
    assert not pool.queued


def test_the_right_password_is_granted_with_the_user_for_upstream(table: UserTable) -> None:
    pool = Pool()
    answer = make(table, pool).check(basic("alice", "pw-alice"))
    assert isinstance(answer, Deferred)
    assert not answer.called
    pool.run_all()
    assert result(answer) == Granted("alice", ((b"X-Auth-User", b"alice"),))


def test_without_a_user_header_nothing_goes_upstream(table: UserTable) -> None:
    pool = Pool()
    answer = make(table, pool, user_header=None).check(basic("alice", "pw-alice"))
    pool.run_all()
    assert result(answer) == Granted("alice", ())


def test_a_pool_that_answers_at_once_gives_a_fired_deferred(table: UserTable) -> None:
    auth = make(table, lambda work: succeed(work()))
    assert result(auth.check(basic("bob", "pw-bob"))) == Granted("bob", ((b"X-Auth-User", b"bob"),))
    assert auth.pending == 0


def test_unknown_user_and_bad_password_answer_the_same_401_but_count_apart(
    table: UserTable,
) -> None:
    pool = Pool()
    auth = make(table, pool)
    unknown = auth.check(basic("mallory", "pw-alice"))
    wrong = auth.check(basic("alice", "pw-bob"))
    assert len(pool.queued) == 2, "an unknown user costs a check too"
    pool.run_all()
    assert result(unknown) == Denied(401, "unknown_user", CHALLENGE)
    assert result(wrong) == Denied(401, "bad_password", CHALLENGE)


def test_a_success_is_cached_and_answered_at_once_without_a_hash(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    first = auth.check(basic("alice", "pw-alice"))
    pool.run_all()
    again = auth.check(basic("alice", "pw-alice"))
    assert again == result(first)
    assert not isinstance(again, Deferred)
    assert pool.ran == 1


def test_the_cache_is_per_password_so_a_wrong_one_is_still_checked(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    auth.check(basic("alice", "pw-alice"))
    pool.run_all()
    wrong = auth.check(basic("alice", "pw-alice "))
    assert isinstance(wrong, Deferred)
    pool.run_all()
    assert result(wrong) == Denied(401, "bad_password", CHALLENGE)


def test_a_cached_success_expires_after_cache_ttl(table: UserTable) -> None:
    pool, clock = Pool(), Clock()
    auth = make(table, pool, clock, cache_ttl=30.0)
    auth.check(basic("alice", "pw-alice"))
    pool.run_all()
    clock.advance(29.999)
    assert isinstance(auth.check(basic("alice", "pw-alice")), Granted)
    clock.advance(0.001)
    expired = auth.check(basic("alice", "pw-alice"))
    assert isinstance(expired, Deferred)
    pool.run_all()
    assert pool.ran == 2
    assert isinstance(result(expired), Granted)


def test_a_cache_ttl_of_zero_caches_nothing(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool, cache_ttl=0.0)
    auth.check(basic("alice", "pw-alice"))
    pool.run_all()
    assert isinstance(auth.check(basic("alice", "pw-alice")), Deferred)


def test_the_cache_is_bounded_forgetting_the_oldest_first(table: UserTable) -> None:
    pool, clock = Pool(), Clock()
    auth = make(table, pool, clock, max_cached=2)
    for user in ("alice", "bob", "carol"):
        auth.check(basic(user, f"pw-{user}"))
        pool.run_all()
        clock.advance(1)
    assert isinstance(auth.check(basic("alice", "pw-alice")), Deferred)
    assert isinstance(auth.check(basic("bob", "pw-bob")), Granted)
    assert isinstance(auth.check(basic("carol", "pw-carol")), Granted)


def test_failures_are_not_cached(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    auth.check(basic("alice", "guess"))
    pool.run_all()
    assert isinstance(auth.check(basic("alice", "guess")), Deferred)
    assert len(pool.queued) == 1


def test_the_cache_holds_a_keyed_hash_never_the_password(table: UserTable) -> None:
    pool = Pool()
    one, two = make(table, pool), make(table, pool)
    for auth in (one, two):
        auth.check(basic("alice", "pw-alice"))
        pool.run_all()
    (key_one,), (key_two,) = one._cache, two._cache
    assert b"pw-alice" not in key_one
    assert len(key_one) == 32
    assert key_one != key_two, "each BasicAuth draws its own key"


def test_a_burst_of_the_same_credentials_shares_one_check(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    burst = [auth.check(basic("alice", "pw-alice")) for _ in range(20)]
    assert len(pool.queued) == 1
    assert auth.pending == 1
    pool.run_all()
    assert {result(answer) for answer in burst} == {Granted("alice", ((b"X-Auth-User", b"alice"),))}
    assert pool.ran == 1
    assert auth.pending == 0


def test_a_burst_of_a_wrong_password_shares_one_check(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    burst = [auth.check(basic("alice", "guess")) for _ in range(5)]
    pool.run_all()
    assert pool.ran == 1
    assert {result(answer).reason for answer in burst} == {"bad_password"}  # type: ignore[union-attr]


def test_different_credentials_are_checked_apart(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    right = auth.check(basic("alice", "pw-alice"))
    wrong = auth.check(basic("alice", "pw-alicE"))
    assert len(pool.queued) == 2
    pool.run_all()
    assert isinstance(result(right), Granted)
    assert result(wrong) == Denied(401, "bad_password", CHALLENGE)


def test_max_pending_checks_are_let_in_and_one_more_is_answered_503(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool, max_pending=3)
    waiting = [auth.check(basic("alice", f"guess-{n}")) for n in range(3)]
    assert all(isinstance(answer, Deferred) for answer in waiting)
    assert auth.check(basic("alice", "guess-3")) == Denied(503, "overloaded")
    assert len(pool.queued) == 3
    joined = auth.check(basic("alice", "guess-0"))
    assert isinstance(joined, Deferred), "joining a check in flight costs no hash"
    pool.run_all()
    assert result(joined).reason == "bad_password"  # type: ignore[union-attr]
    assert isinstance(auth.check(basic("alice", "guess-3")), Deferred)


def test_a_check_that_raises_answers_500_to_everyone_waiting_and_is_logged(
    table: UserTable,
) -> None:
    failing: list[Deferred[bool]] = []

    def pool(work: Callable[[], bool]) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        failing.append(d)
        return d

    auth = make(table, pool)
    answers = [auth.check(basic("alice", "hunter2")) for _ in range(3)]
    with capturedLogs() as events:
        failing[0].errback(RuntimeError("the pool is stopped"))
    assert {result(answer) for answer in answers} == {Denied(500, "error")}
    assert auth.pending == 0
    assert len(events) == 1
    assert "hunter2" not in repr(events)


def test_a_pool_that_raises_at_once_answers_500(table: UserTable) -> None:
    def pool(work: Callable[[], bool]) -> Deferred[bool]:
        raise RuntimeError("no threads")

    with capturedLogs():
        assert result(make(table, pool).check(basic("bob", "pw-bob"))) == Denied(500, "error")
    with capturedLogs():
        failed = make(table, lambda work: fail(ValueError("bad"))).check(basic("bob", "pw-bob"))
        assert result(failed) == Denied(500, "error")


def test_a_waiter_cancelled_leaves_the_check_to_the_others(table: UserTable) -> None:
    pool = Pool()
    auth = make(table, pool)
    leaving = auth.check(basic("alice", "pw-alice"))
    staying = auth.check(basic("alice", "pw-alice"))
    assert isinstance(leaving, Deferred)
    leaving.cancel()
    leaving.addErrback(lambda _: None)
    pool.run_all()
    assert isinstance(result(staying), Granted)


def test_reprs_show_no_secret(table: UserTable) -> None:
    auth = make(table, Pool())
    auth.check(basic("alice", "pw-alice"))
    assert "pw-alice" not in repr(auth)
    assert repr(auth) == "<BasicAuth realm='proxyd' <UserTable users.htpasswd: 3 users>>"


@pytest.mark.parametrize(
    "options", [{"max_pending": 0}, {"cache_ttl": -1.0}, {"max_cached": -1}, {"realm": "a\nb"}]
)
def test_nonsense_settings_are_refused(table: UserTable, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make(table, Pool(), Clock(), **options)
