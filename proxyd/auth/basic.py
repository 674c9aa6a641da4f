"""The Basic authentication method (RFC 7617) against an htpasswd file's users.

A password check is slow by design (bcrypt, argon2), so it runs off the reactor thread and its
successes are remembered for a short time: a browser that sends the same credentials with
every request costs one hash, not one per request. What is remembered is a keyed hash of the
user and password, never the password.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import NamedTuple

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.auth.htpasswd import UserTable
from proxyd.auth.result import Decision, Denied, Granted
from proxyd.clock import Clock

log = Logger()

RunInThread = Callable[[Callable[[], bool]], "Deferred[bool]"]
"""Runs a password check in a thread: functools.partial(deferToThreadPool, reactor, pool),
with a pool of bounded size."""

_CONTROLS = frozenset(range(0x20)) | {0x7F}


class Credentials(NamedTuple):
    """A user-id and password as a client sent them; the repr hides the password."""

    user: str
    password: bytes

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=<hidden>)"


def parse_basic(value: bytes) -> Credentials | None:
    """The user-id and password in an Authorization field's value `value`, or None if it is
    not well-formed Basic credentials.

    RFC 7617: the scheme is case-insensitive, then one or more spaces and the base64 (RFC 4648,
    padded, no other characters) of user-id ':' password; the user-id is what comes before the
    first ':' (it cannot hold one: the password can). Neither may hold control characters
    (section 2; nor may the user-id hold other unprintable ones: it goes to logs and upstream),
    and an empty user-id is refused too (no htpasswd user has one).

    The user-id is decoded as UTF-8, which the challenge's `charset="UTF-8"` asks clients for
    (section 2.1), else as ISO-8859-1, which older clients sent. The password is left as the
    bytes sent: it is hashed as such, as htpasswd hashed the bytes it was given.
    """
    scheme, _, rest = value.strip(b" \t").partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(rest.lstrip(b" "), validate=True)
    except binascii.Error:
        return None
    raw_user, colon, password = decoded.partition(b":")
    if not colon or not raw_user or not _CONTROLS.isdisjoint(password):
        return None
    try:
        user = raw_user.decode("utf-8")
    except UnicodeDecodeError:
        user = raw_user.decode("iso-8859-1")
    if not user.isprintable():
        return None
    return Credentials(user, password)


def challenge(realm: str) -> bytes:
    """The WWW-Authenticate value that asks for Basic credentials for `realm`."""
    if not realm.isprintable():
        raise ValueError("a realm is printable text")
    quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
    return f'Basic realm="{quoted}", charset="UTF-8"'.encode()


class _Pending:
    """One password check in a thread, and the requests waiting for its answer."""

    __slots__ = ("user", "waiters")

    def __init__(self, user: str) -> None:
        self.user = user
        self.waiters: list[Deferred[Decision]] = []


class BasicAuth:
    """Decides requests' Basic credentials against `table`.

    `check()` answers at once when it can (no or malformed credentials, credentials that
    passed within `cache_ttl` seconds, too many checks in flight), else with a Deferred:

    - Checks run through `run_in_thread`. Requests that bring the same credentials while
      their check is in flight wait for that check rather than start another, so a burst
      costs one hash; at most `max_pending` different checks are in flight, and a request
      that would start one more is answered 503 ("overloaded") rather than queued without
      bound (a request joining a check in flight costs no hash and is always let in).
    - Successes are remembered for `cache_ttl` seconds (0: not at all), at most `max_cached`
      of them (the oldest forgotten first), under HMAC-SHA256 of user and password with a
      key drawn for this object: the password is kept nowhere, and a memory dump does not
      give a hash to attack offline. An entry is not renewed by use, so a check is repeated
      at least every `cache_ttl`.
    - Failures are not remembered: a guesser tries a new password each time, which no cache
      would save, and a client that repeats a wrong password in a burst shares one check.
    - "unknown_user" and "bad_password" answer the same 401 (and an unknown user costs as
      much as a known one: UserTable.verify): the reason is for the metrics only.
    - A check that raises answers 500 ("error"), logged without the credentials.
    """

    def __init__(
        self,
        table: UserTable,
        *,
        realm: str,
        cache_ttl: float,
        clock: Clock,
        run_in_thread: RunInThread,
        max_pending: int,
        user_header: bytes | None,
        max_cached: int = 10_000,
    ) -> None:
        if cache_ttl < 0 or max_pending < 1 or max_cached < 0:
            raise ValueError("cache_ttl and max_cached are >= 0, max_pending >= 1")
        self.table = table
        self.realm = realm
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._run_in_thread = run_in_thread
        self._max_pending = max_pending
        self._max_cached = max_cached
        self._user_header = user_header
        self._key = secrets.token_bytes(32)
        self._cache: collections.OrderedDict[bytes, tuple[float, Granted]] = (
            collections.OrderedDict()
        )
        """Successes: keyed hash -> (expiry, decision), oldest first."""
        self._pending: dict[bytes, _Pending] = {}
        fields = ((b"WWW-Authenticate", challenge(realm)),)
        self._denied = {
            reason: Denied(401, reason, fields)
            for reason in ("missing", "malformed", "unknown_user", "bad_password")
        }
        self._overloaded = Denied(503, "overloaded")
        self._error = Denied(500, "error")

    def __repr__(self) -> str:
        return f"<BasicAuth realm={self.realm!r} {self.table!r}>"

    @property
    def pending(self) -> int:
        """How many checks are in flight."""
        return len(self._pending)

    def check(self, authorization: bytes | None) -> Decision | Deferred[Decision]:
        """The decision for a request whose Authorization field is `authorization` (None
        when it has none; the caller decides what a repeated field is)."""
        if authorization is None:
            return self._denied["missing"]
        credentials = parse_basic(authorization)
        if credentials is None:
            return self._denied["malformed"]
        key = hmac.digest(
            self._key, credentials.user.encode() + b":" + credentials.password, hashlib.sha256
        )
        cached = self._cache.get(key)
        if cached is not None:
            expiry, granted = cached
            if self._clock.seconds() < expiry:
                return granted
            del self._cache[key]
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self._max_pending:
                return self._overloaded
            pending = self._pending[key] = _Pending(credentials.user)
            waiter = self._wait(pending)
            self._start(key, credentials)
            return waiter
        return self._wait(pending)

    def _wait(self, pending: _Pending) -> Deferred[Decision]:
        def cancel(waiter: Deferred[Decision]) -> None:
            # Its client left: only this waiter goes (with CancelledError), the check goes on.
            if waiter in pending.waiters:
                pending.waiters.remove(waiter)

        waiter: Deferred[Decision] = Deferred(cancel)
        pending.waiters.append(waiter)
        return waiter

    def _start(self, key: bytes, credentials: Credentials) -> None:
        table = self.table
        user, password = credentials
        work = maybeDeferred(self._run_in_thread, lambda: table.verify(user, password))
        work.addCallbacks(self._checked, self._failed, callbackArgs=(key,), errbackArgs=(key,))

    def _checked(self, ok: bool, key: bytes) -> None:
        pending = self._pending.pop(key)
        decision: Decision
        if ok:
            upstream = ((self._user_header, pending.user.encode()),) if self._user_header else ()
            decision = Granted(pending.user, upstream)
            self._remember(key, decision)
        elif pending.user in self.table:
            decision = self._denied["bad_password"]
        else:
            decision = self._denied["unknown_user"]
        self._answer(pending, decision)

    def _failed(self, failure: Failure, key: bytes) -> None:
        pending = self._pending.pop(key)
        log.failure("a Basic password check for realm {realm} raised", failure, realm=self.realm)
        self._answer(pending, self._error)

    def _answer(self, pending: _Pending, decision: Decision) -> None:
        waiters, pending.waiters = pending.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(decision)

    def _remember(self, key: bytes, granted: Granted) -> None:
        if not self._cache_ttl or not self._max_cached:
            return
        cache = self._cache
        now = self._clock.seconds()
        cache[key] = (now + self._cache_ttl, granted)
        cache.move_to_end(key)
        # Every entry lives as long, so the oldest expire first.
        while cache and (len(cache) > self._max_cached or next(iter(cache.values()))[0] <= now):
            cache.popitem(last=False)
