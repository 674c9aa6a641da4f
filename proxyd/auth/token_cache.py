"""Verified bearer tokens remembered (for proxyd.auth.jwt), as Envoy's jwt_authn remembers them
with `jwt_cache_config`: a token whose signature, header and claims held is kept with the
decision and its time bounds, so that the next request bearing it costs a hash and a look-up
rather than a signature verification and the parsing around it. The caller still checks the
time bounds at every request; only successes are kept.

Entries are keyed by a BLAKE2b-256 of the token under a key drawn for each cache, not by the
token: a bearer token is a credential good until it expires, and a memory dump (a core file,
swap) should not hand out up to `size` of them, nor a digest that could confirm a captured one
offline; an entry's key is also 32 bytes whatever the token's size (up to 8 KB). It costs
0.8 µs a request (a look-up by the token itself would cost 0.1 µs), and no collision is to be
feared: the key never leaves the process, so each try at a forged token sharing a remembered
token's digest is a request, with a chance of `size` in 2**256 (basic.py keeps its successes
under a keyed hash too).

Each entry belongs to the key set that verified it. The key set is given at each look-up and
each insertion, and one that is not the very object the entries were verified with (a JWKS
refresh makes a new one) empties the cache first: a token signed by a key that was rotated
out is then verified again, and refused. A refresh that brings the same keys costs one full
verification per token in use, every `jwks_refresh`.
"""

from __future__ import annotations

import collections
import hashlib
import secrets

import attrs

from proxyd.auth.result import Granted


@attrs.frozen
class CachedToken:
    """What a verified token decided, and when it holds: `not_before <= now < expires`."""

    granted: Granted
    expires: float
    """`exp` plus the leeway: from this time the token is expired."""
    not_before: float
    """`nbf` minus the leeway (minus infinity without `nbf`): before it, not yet valid."""


class TokenCache:
    """At most `size` (at least 1) verified tokens, the least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size: expected at least 1; found {size!r}")
        self.size = size
        self._hasher = hashlib.blake2b(digest_size=32, key=secrets.token_bytes(32))
        """Keyed once; copied for each token (saves hashing the key's block every time)."""
        self._entries: collections.OrderedDict[bytes, CachedToken] = collections.OrderedDict()
        """Digest -> entry, least recently used first."""
        self._key_set: object = None
        """The key set that verified the entries; held, so that its identity cannot be reused
        by another object while entries depend on it."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: bytes, key_set: object) -> CachedToken | None:
        """The entry for `token`, verified with `key_set` (the key set in use now)."""
        if key_set is not self._key_set:
            self._start(key_set)
            return None
        digest = self._digest(token)
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries.move_to_end(digest)
        return entry

    def put(self, token: bytes, key_set: object, entry: CachedToken) -> None:
        """Remember that `token`, verified with `key_set`, holds as `entry` says."""
        if key_set is not self._key_set:
            self._start(key_set)
        entries = self._entries
        digest = self._digest(token)
        entries[digest] = entry
        entries.move_to_end(digest)
        if len(entries) > self.size:
            entries.popitem(last=False)

    def discard(self, token: bytes) -> None:
        """Forget `token` (it has expired)."""
        self._entries.pop(self._digest(token), None)

    def _start(self, key_set: object) -> None:
        self._entries.clear()
        self._key_set = key_set

    def _digest(self, token: bytes) -> bytes:
        hasher = self._hasher.copy()
        hasher.update(token)
        return hasher.digest()
