"""A JWKS key source (RFC 7517 section 5): the signing keys an issuer publishes at a URL, fetched
asynchronously, cached, refreshed every `refresh_interval` and, when a token names a key the
set does not hold (the issuer rotated its keys), at once, though at most every
`min_refresh_interval`. A fetch that fails or brings an unusable document keeps the keys there
were; the failure is logged once per streak of failures, and the return to normal once.

The fetch is injected, `fetch(url) -> Deferred[bytes]`: the wiring builds it on
twisted.web.client.Agent (and should stop reading past `max_size`); tests pass fakes. A fetch
that has not answered after `timeout` seconds is cancelled and counts as a failure, so that a
request waiting on a refresh never hangs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from joserfc.errors import InvalidKeyTypeError
from joserfc.jwk import JWKRegistry, Key, KeySet
from joserfc.util import urlsafe_b64decode
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.clock import Clock, DelayedCall
from proxyd.config.errors import Invalid

MAX_SIZE = 1024 * 1024
"""The largest JWKS document accepted, in bytes."""

MIN_RSA_BITS = 2048
"""RSA keys below this size are left out of a set (RFC 7518 section 3.3 requires 2048 bits)."""

Fetch = Callable[[str], "Deferred[bytes]"]
"""Fetches a URL's body: fires with the bytes, or fails (connection, status other than 200,
too large, ...)."""

log = Logger(namespace="proxyd.auth.jwks")


def validate_url(text: str) -> str:
    """`text` if it is an http or https URL with a host (for the config layer), else Invalid."""
    expected = "an http:// or https:// URL with a host"
    hint = f"did you mean 'https://{text}'?" if text and "://" not in text else None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    except ValueError:
        raise Invalid(expected, repr(text), hint) from None
    bad_character = any(c.isspace() or not c.isprintable() for c in text)
    if parts.scheme not in ("http", "https") or not parts.hostname or bad_character:
        raise Invalid(expected, repr(text), hint)
    return text


class InvalidDocument(ValueError):
    """A JWKS document that cannot be used; the message says why, in a few fixed words."""


def parse_key_set(document: bytes, max_size: int = MAX_SIZE) -> KeySet:
    """The signing keys of a JWKS document, public parts only.

    Left out, as RFC 7517 allows: keys for encryption (`"use": "enc"`), keys of a type joserfc
    does not know, symmetric keys (a shared secret in a published set is no secret) and RSA
    keys under MIN_RSA_BITS. A key that is malformed makes the whole document invalid, as does
    a document with no signing key left: keeping the previous keys is safer than guessing.
    """
    if len(document) > max_size:
        raise InvalidDocument(f"larger than {max_size} bytes")
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):
        raise InvalidDocument("not JSON") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InvalidDocument('not a JSON object with a "keys" list')
    keys: list[Key] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidDocument(f"key {index} is not a JSON object")
        if entry.get("use") == "enc" or entry.get("kty") == "oct" or _weak_rsa(entry):
            continue
        try:
            key = JWKRegistry.import_key(entry)
        except InvalidKeyTypeError:
            continue
        except Exception as e:  # joserfc raises its own errors, ValueError, KeyError, ...
            raise InvalidDocument(f"key {index} rejected ({type(e).__name__})") from None
        if key.is_private:
            key = JWKRegistry.import_key(key.as_dict(private=False))
        keys.append(key)
    if not keys:
        raise InvalidDocument("no signing key")
    return KeySet(keys)


def _weak_rsa(entry: dict[str, Any]) -> bool:
    """Whether `entry` is an RSA key under MIN_RSA_BITS (told before joserfc imports it, which
    would warn about it)."""
    modulus = entry.get("n")
    if entry.get("kty") != "RSA" or not isinstance(modulus, str):
        return False
    try:
        bits = int.from_bytes(urlsafe_b64decode(modulus.encode())).bit_length()
    except ValueError:
        return False  # joserfc's import refuses it
    return bits < MIN_RSA_BITS


def redacted(url: str) -> str:
    """`url` without what may be a secret (user info, query, fragment), for the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Jwks:
    """The keys published at `url`: `key_set` holds the last good set (None before the first
    success), `get(kid)` answers a token's key lookup, refreshing when the kid is unknown.

    `start()` fetches once and then every `refresh_interval` (every `min_refresh_interval`
    while no key was ever had); `stop()` cancels the next fetch and the one in flight.
    """

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        clock: Clock,
        *,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        max_size: int = MAX_SIZE,
        timeout: float = 10.0,
    ) -> None:
        if not 0 < min_refresh_interval <= refresh_interval:
            raise ValueError("expected 0 < min_refresh_interval <= refresh_interval")
        if timeout <= 0 or max_size <= 0:
            raise ValueError("expected a timeout and a max_size above zero")
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self.max_size = max_size
        self.timeout = timeout
        self.key_set: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetch = fetch
        self._clock = clock
        self._log_url = redacted(url)
        self._fetching: Deferred[Any] | None = None
        self._waiters: list[Deferred[KeySet | None]] = []
        self._last_attempt: float | None = None
        self._next: DelayedCall | None = None
        self._state: Literal["idle", "running", "stopped"] = "idle"
        """idle: fetches only on demand (get); running: also periodically; stopped: never."""
        self._failing = False
        """Whether the last fetch failed: the first failure of a streak is logged, and the
        success that ends it."""

    def start(self) -> None:
        """Fetch now, then periodically."""
        self._state = "running"
        self._refresh()

    def stop(self) -> None:
        """No more fetches; callers waiting on one get the keys there are."""
        self._state = "stopped"
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._fetching is not None:
            self._fetching.cancel()

    def get(self, kid: str | None) -> KeySet | Deferred[KeySet | None] | None:
        """The key set to verify a token whose header names `kid` (None: names none).

        A known kid (or none, once there are keys) is answered at once. Otherwise a refresh
        starts if the last fetch started at least `min_refresh_interval` ago, or is joined if
        one is in flight, and the answer is a Deferred firing with the key set after it (the
        old one, or None, if it failed); else the answer is the key set there is, at once.
        """
        key_set = self.key_set
        if key_set is not None and (kid is None or kid in self._kids):
            return key_set
        if self._fetching is None:
            if self._state == "stopped":
                return key_set
            last = self._last_attempt
            if last is not None and self._clock.seconds() - last < self.min_refresh_interval:
                return key_set
            self._refresh()
            if self._fetching is None:  # the fetch answered at once
                return self.key_set
        waiter: Deferred[KeySet | None] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def _refresh(self) -> None:
        if self._fetching is not None:
            return
        self._last_attempt = self._clock.seconds()
        try:
            fetching = self._fetch(self.url)
        except Exception:
            fetching = fail()
        self._fetching = fetching
        timer = self._clock.callLater(self.timeout, fetching.cancel)
        fetching.addCallbacks(self._fetched, self._fetch_failed)
        fetching.addBoth(self._settled, timer)

    def _fetched(self, document: bytes) -> None:
        try:
            key_set = parse_key_set(document, self.max_size)
        except InvalidDocument as e:
            self._failed(f"invalid document: {e}")
            return
        kids = frozenset(key.kid for key in key_set if key.kid is not None)
        if self._failing:
            log.info("JWKS {url} fetched again: {keys} keys", url=self._log_url, keys=len(kids))
        elif kids != self._kids:
            log.info(
                "JWKS {url}: {keys} keys, {added} new, {removed} gone",
                url=self._log_url,
                keys=len(kids),
                added=len(kids - self._kids),
                removed=len(self._kids - kids),
            )
        self.key_set = key_set
        self._kids = kids
        self._failing = False

    def _fetch_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            if self._state == "stopped":
                return  # cancelled by stop(): not the server's failure
            self._failed(f"no answer within {self.timeout:g}s")
        else:
            name = failure.type.__name__ if failure.type is not None else "error"
            self._failed(f"{name}: {failure.getErrorMessage()}")

    def _failed(self, error: str) -> None:
        if not self._failing:
            log.warn(
                "JWKS {url} could not be fetched ({error}); keeping {keys} keys",
                url=self._log_url,
                error=error,
                keys=len(self._kids),
            )
        self._failing = True

    def _settled(self, result: object, timer: DelayedCall) -> None:
        if isinstance(result, Failure):
            log.failure("JWKS {url}: unexpected error", result, url=self._log_url)
        if timer.active():
            timer.cancel()
        self._fetching = None
        if self._state == "running":
            if self._next is not None and self._next.active():
                self._next.cancel()
            delay = self.refresh_interval if self.key_set is not None else self.min_refresh_interval
            self._next = self._clock.callLater(delay, self._refresh)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.key_set)
