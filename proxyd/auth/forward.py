"""Forward auth (nginx's auth_request, Traefik's ForwardAuth): each request is authorized by
asking another HTTP service, whose answer decides.

The subrequest is a GET to the configured URL, without a body, carrying what the service
needs to know of the original request (Traefik's fields, and nginx's X-Original-URI):

    X-Forwarded-Method   the original method          X-Forwarded-Uri, X-Original-URI  its
    X-Forwarded-Proto    http or https                target as received (path and query)
    X-Forwarded-Host     its Host                     X-Forwarded-For  the client's address
    X-Request-ID         its id, to match the logs    (after the trusted proxies' list)

and the client's fields named by `request_headers` (Authorization and Cookie by default),
as they came.

- A 2xx answer lets the request on: the answer's fields named by `copy_headers` are added to
  the request sent upstream (the client's own fields of those names were removed first), and
  the value of the first of them present is the request's identity (the access log's
  `auth_user`; "" when none is).
- Any other answer goes back to the client as the service made it: its status, its
  WWW-Authenticate, Location, Set-Cookie and Content-Type fields, and its body (up to
  MAX_ANSWER_BODY bytes; a larger one is replaced by proxyd's error page for the status).
  So a login redirect (302 with Location) or a 401 with a challenge reaches the client.
- A service that cannot be reached, or does not answer within `timeout` (connect, answer
  and body together), gets the client a 503: the fault is on proxyd's side of the request,
  and 503 says "try again later" where 500 would say the request failed (the issue allows
  either; 504 would blame an upstream the client knows nothing of). Never a hang.

Decisions may be cached (`cache_time` > 0): a grant is remembered for that long under the
values of the `cache_key` fields (a keyed hash of them: no credential is kept), so that a
client presenting the same session cookie again costs no subrequest. Only grants are cached:
a denial may depend on the URI (a login redirect carrying the page to return to), and
denials cost the auth service little. The cache is keyed on fields only, not on the URI: an
auth service that decides per path must not be cached (docs/security.md).

This module is sans-IO except ForwardAuth, which asks through an injected `Requester`
(proxyd.auth.fetch.HttpClient, or a fake in tests) and a clock.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.auth.fetch import Fetched, FetchTimeout
from proxyd.auth.jwks import redacted
from proxyd.auth.result import Decision, Denied, Fields, Granted
from proxyd.clock import Clock
from proxyd.config.auth_model import ForwardAuthConfig

log = Logger(namespace="proxyd.auth.forward")

Headers = Sequence[tuple[bytes, bytes]]

MAX_ANSWER_BODY = 64 * 1024
"""The largest body of a denial passed to the client, in bytes."""

ANSWER_FIELDS = (b"www-authenticate", b"location", b"set-cookie", b"content-type")
"""The fields of a denial passed to the client (lower case), in the answer's order."""

MAX_PENDING = 256
"""Subrequests in flight at once, per [auth] section and listener: a request that would be
one more is answered 503 ("overloaded") rather than queued without bound."""

MAX_CACHED = 10_000
"""Cached grants at most (the oldest forgotten first)."""

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@attrs.frozen
class Original:
    """What the subrequest tells of the original request."""

    method: str
    uri: bytes
    """The target as received: path, and '?' and query if any."""
    host: str
    proto: str
    forwarded_for: bytes
    """X-Forwarded-For as proxyd sends it upstream: the client's address, after the
    incoming value when the peer is a trusted proxy."""
    request_id: str
    headers: Headers
    """The client's fields (those named by request_headers are sent)."""


def _text(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def subrequest_headers(
    original: Original, request_headers: Iterable[bytes]
) -> list[tuple[bytes, bytes]]:
    """The fields of the subrequest for `original`: the forwarding fields, then the client's
    fields named by `request_headers` (lower-case names), in the order they came."""
    fields = [
        (b"X-Forwarded-Method", _text(original.method)),
        (b"X-Forwarded-Proto", _text(original.proto)),
        (b"X-Forwarded-Host", _text(original.host)),
        (b"X-Forwarded-Uri", original.uri),
        (b"X-Original-URI", original.uri),
        (b"X-Forwarded-For", original.forwarded_for),
    ]
    if original.request_id:
        fields.append((b"X-Request-ID", _text(original.request_id)))
    wanted = frozenset(request_headers)
    fields += [(name, value) for name, value in original.headers if name.lower() in wanted]
    return fields


_REASONS = {401: "unauthorized", 403: "forbidden"}


def decide(fetched: Fetched, copy_headers: Sequence[bytes]) -> Decision:
    """The decision the auth service's answer `fetched` makes (copy_headers: the names of
    the fields copied from a grant, as configured)."""
    status = fetched.status
    if 200 <= status <= 299:
        upstream: list[tuple[bytes, bytes]] = []
        identity = ""
        for name in copy_headers:
            lower = name.lower()
            values = [
                value
                for key, value in fetched.headers
                if key.lower() == lower and not _CONTROL.search(value)
            ]
            if values and not identity:
                identity = values[0].decode("latin-1")
            upstream += [(name, value) for value in values]
        return Granted(identity, tuple(upstream))
    if not 300 <= status <= 599:
        return Denied(503, "bad_answer")
    body = fetched.body or b""
    fields: Fields = tuple(
        (name, value)
        for name, value in fetched.headers
        if name.lower() in ANSWER_FIELDS
        and not (not body and name.lower() == b"content-type")
        and not _CONTROL.search(value)
    )
    reason = _REASONS.get(status, "auth_error" if status >= 500 else "denied")
    return Denied(status, reason, fields, body)


class DecisionCache:
    """Grants by the values of the `names` fields of the request (lower case), for `ttl`
    seconds, at most `max_entries` of them; a request with none of the fields is never
    looked up nor remembered (it would share one entry with every such request)."""

    def __init__(
        self, clock: Clock, ttl: float, names: Sequence[bytes], max_entries: int = MAX_CACHED
    ) -> None:
        if ttl <= 0 or not names or max_entries < 1:
            raise ValueError("a decision cache needs a ttl, key fields and room")
        self._clock = clock
        self._ttl = ttl
        self._names = tuple(name.lower() for name in names)
        self._max = max_entries
        self._secret = secrets.token_bytes(32)
        self._entries: collections.OrderedDict[bytes, tuple[float, Granted]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, headers: Headers) -> bytes | None:
        """A keyed hash of the `names` fields' values in `headers`; None without any."""
        found: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lower = name.lower()
            if lower in self._names:
                found.setdefault(lower, []).append(value)
        if not found:
            return None
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for name in self._names:
            values = found.get(name)
            # Length-prefixed, so that no two different sets of values hash alike.
            count = -1 if values is None else len(values)
            mac.update(b"%d;" % count)
            for value in values or ():
                mac.update(b"%d:%s" % (len(value), value))
        return mac.digest()

    def get(self, key: bytes) -> Granted | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expiry, granted = entry
        if self._clock.seconds() < expiry:
            return granted
        del self._entries[key]
        return None

    def put(self, key: bytes, granted: Granted) -> None:
        entries = self._entries
        now = self._clock.seconds()
        entries[key] = (now + self._ttl, granted)
        entries.move_to_end(key)
        # Every entry lives as long, so the oldest expire first.
        while entries and (len(entries) > self._max or next(iter(entries.values()))[0] <= now):
            entries.popitem(last=False)


class Requester(Protocol):
    """What ForwardAuth asks through (proxyd.auth.fetch.HttpClient)."""

    def get(
        self,
        url: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        timeout: float,
        max_body: int,
    ) -> Deferred[Fetched]: ...


class ForwardAuth:
    """Decides requests by asking the auth service at `config.url` through `client`."""

    def __init__(
        self,
        config: ForwardAuthConfig,
        client: Requester,
        clock: Clock,
        *,
        max_pending: int = MAX_PENDING,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self.config = config
        self.url = config.url
        self._client = client
        self._timeout = config.timeout
        self._request_headers = tuple(name.lower().encode() for name in config.request_headers)
        self._copy_headers = tuple(name.encode() for name in config.copy_headers)
        self._cache = (
            DecisionCache(
                clock, config.cache_time, [n.encode() for n in config.cache_key], max_cached
            )
            if config.cache_time > 0 and config.cache_key
            else None
        )
        self._max_pending = max_pending
        self.pending = 0
        """Subrequests in flight."""
        self._log_url = redacted(config.url)
        self._failing = False
        """The last subrequest failed: the first failure of a streak is logged, and the
        success that ends it."""
        self._overloaded = Denied(503, "overloaded")
        self._timed_out = Denied(503, "timeout")
        self._unavailable = Denied(503, "unavailable")

    def __repr__(self) -> str:
        return f"<ForwardAuth {self._log_url}>"

    @property
    def cache(self) -> DecisionCache | None:
        return self._cache

    def check(self, original: Original) -> Decision | Deferred[Decision]:
        """The decision for `original`: at once from the cache or when overloaded, else a
        Deferred of the auth service's answer. Cancelling it drops the subrequest."""
        key: bytes | None = None
        if self._cache is not None:
            key = self._cache.key(original.headers)
            if key is not None:
                cached = self._cache.get(key)
                if cached is not None:
                    return cached
        if self.pending >= self._max_pending:
            return self._overloaded
        self.pending += 1
        asked = self._client.get(
            self.url,
            subrequest_headers(original, self._request_headers),
            timeout=self._timeout,
            max_body=MAX_ANSWER_BODY,
        )
        return asked.addBoth(self._settled).addCallbacks(
            self._answered, self._failed, callbackArgs=(key,)
        )

    def _settled(self, result: Fetched | Failure) -> Fetched | Failure:
        self.pending -= 1
        return result

    def _answered(self, fetched: Fetched, key: bytes | None) -> Decision:
        if self._failing:
            self._failing = False
            log.info("forward auth {url} answers again", url=self._log_url)
        decision = decide(fetched, self._copy_headers)
        if key is not None and self._cache is not None and isinstance(decision, Granted):
            self._cache.put(key, decision)
        return decision

    def _failed(self, failure: Failure) -> Decision | Failure:
        if failure.check(CancelledError):
            return failure  # the request was given up (its client left): nobody to answer
        timed_out = failure.check(FetchTimeout) is not None
        if not self._failing:
            self._failing = True
            log.warn(
                "forward auth {url} failed ({error}); answering 503 until it answers",
                url=self._log_url,
                error=f"no answer within {self._timeout:g}s"
                if timed_out
                else f"{failure.type.__name__ if failure.type else 'error'}: "
                f"{failure.getErrorMessage()}",
            )
        return self._timed_out if timed_out else self._unavailable
