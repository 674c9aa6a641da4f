"""Apache htpasswd files: users and their password hashes, as `htpasswd` writes them.

Accepted: bcrypt (`htpasswd -B`: `$2y$`, also `$2a$`/`$2b$`), SHA-crypt (`-2`/`-5`: `$5$`,
`$6$`), argon2 (`$argon2id$`, `$argon2i$`, which `htpasswd` does not write but other tools
do), and, with a warning, APR1-MD5 (`-m`, htpasswd's old default: `$apr1$`) and unsalted
SHA-1 (`-s`: `{SHA}`). Refused: crypt(3) DES (`-d`), plain text (`-p`), MD5-crypt (`$1$`) and
any other scheme, since a file that Apache would read differently or that stores passwords
nearly in the clear is better refused at load than half-served.

A line is read as Apache's mod_authn_file reads it: the user is everything before the first
':', the hash everything after it up to the next ':' (anything later is ignored), surrounding
whitespace is dropped, and blank lines and lines starting with '#' are skipped. Unlike Apache
(which takes the first), a user named twice is an error.

Checking a password is slow by design (bcrypt, argon2): `UserTable.verify` is meant to run
in a thread pool, never on the reactor thread.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import argon2
import attrs
import bcrypt
from passlib.hash import apr_md5_crypt, sha256_crypt, sha512_crypt

from proxyd.config.errors import ConfigError, ConfigErrors

_HASH64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""The crypt(3) alphabet that bcrypt, APR1 and SHA-crypt hashes are written in."""

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_BCRYPT_MAX_PASSWORD = 72
"""bcrypt reads at most 72 bytes of a password; Apache's (crypt_blowfish) ignores the rest,
and the bcrypt package refuses longer ones, so proxyd cuts them as Apache does."""

_ARGON2 = argon2.PasswordHasher()
"""Its own parameters do not matter: verify() uses those written in the hash."""


def _verify_bcrypt(encoded: str, password: bytes) -> bool:
    return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], encoded.encode("ascii"))


def _well_formed_argon2(encoded: str) -> bool:
    try:
        argon2.extract_parameters(encoded)
        for field in encoded.rsplit("$", 2)[1:]:  # salt and hash: base64 without padding
            base64.b64decode(field + "=" * (-len(field) % 4), validate=True)
    except (argon2.exceptions.InvalidHashError, ValueError):
        return False
    return True


def _verify_argon2(encoded: str, password: bytes) -> bool:
    try:
        return _ARGON2.verify(encoded, password)
    except argon2.exceptions.VerifyMismatchError:
        return False


def _well_formed_sha1(encoded: str) -> bool:
    try:
        return len(base64.b64decode(encoded[len("{SHA}") :], validate=True)) == 20
    except ValueError:
        return False


def _verify_sha1(encoded: str, password: bytes) -> bool:
    stored = base64.b64decode(encoded[len("{SHA}") :])
    return hmac.compare_digest(hashlib.sha1(password).digest(), stored)


def _passlib(handler: Any) -> tuple[Callable[[str], bool], Callable[[str, bytes], bool]]:
    """(well-formed?, verify) for a passlib hash class."""

    def well_formed(encoded: str) -> bool:
        try:
            handler.from_string(encoded)
        except ValueError:
            return False
        return True

    def verify(encoded: str, password: bytes) -> bool:
        return bool(handler.verify(password, encoded))

    return well_formed, verify


def _cost_crypt(encoded: str) -> str:
    """The part of a crypt(3)-style hash that sets its cost: all before the checksum."""
    return encoded.rpartition("$")[0]


def _dummy_crypt(encoded: str) -> str:
    """A hash with the same cost as `encoded` and a random checksum: checking a password
    against it costs as much and never succeeds."""
    head, _, tail = encoded.rpartition("$")
    return f"{head}${''.join(secrets.choice(_HASH64) for _ in tail)}"


def _dummy_bcrypt(encoded: str) -> str:
    # A random salt's last character must carry zero padding bits: gensalt() makes one.
    salt = bcrypt.gensalt(int(encoded[4:6])).decode("ascii")[7:]
    return f"{encoded[:7]}{salt}{''.join(secrets.choice(_HASH64) for _ in range(31))}"


def _cost_argon2(encoded: str) -> str:
    return encoded.rsplit("$", 2)[0]


def _dummy_argon2(encoded: str) -> str:
    head, salt, digest = encoded.rsplit("$", 2)

    def random_like(b64: str) -> str:
        data = secrets.token_bytes(len(b64) * 3 // 4)
        return base64.b64encode(data).decode("ascii").rstrip("=")

    return f"{head}${random_like(salt)}${random_like(digest)}"


def _dummy_sha1(encoded: str) -> str:
    return "{SHA}" + base64.b64encode(secrets.token_bytes(20)).decode("ascii")


@attrs.frozen
class Scheme:
    """One hash scheme that htpasswd files may hold, and how proxyd reads and checks it."""

    name: str
    prefixes: tuple[str, ...]
    shape: str
    """What a hash of this scheme looks like, for error messages."""
    well_formed: Callable[[str], bool]
    verify: Callable[[str, bytes], bool]
    cost: Callable[[str], str]
    """The part of a hash that sets the cost of checking it (scheme and parameters)."""
    dummy: Callable[[str], str]
    """A hash as costly to check as the one given, that no password matches."""
    weak: str | None = None
    """Why this scheme is weak (warned about at load), or None."""


_SHA_CRYPT = {handler: _passlib(handler) for handler in (sha256_crypt, sha512_crypt)}
_APR1 = _passlib(apr_md5_crypt)

SCHEMES: tuple[Scheme, ...] = (
    Scheme(
        "bcrypt",
        ("$2y$", "$2b$", "$2a$"),
        "'$2y$', a cost from 04 to 31, '$' and 53 characters",
        lambda encoded: _BCRYPT.fullmatch(encoded) is not None,
        _verify_bcrypt,
        _cost_crypt,
        _dummy_bcrypt,
    ),
    Scheme(
        "argon2",
        ("$argon2id$", "$argon2i$"),
        "'$argon2id$v=19$m=...,t=...,p=...$' salt '$' hash",
        _well_formed_argon2,
        _verify_argon2,
        _cost_argon2,
        _dummy_argon2,
    ),
    Scheme(
        "SHA-256-crypt",
        ("$5$",),
        "'$5$', optionally 'rounds=N$', a salt, '$' and 43 characters",
        *_SHA_CRYPT[sha256_crypt],
        _cost_crypt,
        _dummy_crypt,
    ),
    Scheme(
        "SHA-512-crypt",
        ("$6$",),
        "'$6$', optionally 'rounds=N$', a salt, '$' and 86 characters",
        *_SHA_CRYPT[sha512_crypt],
        _cost_crypt,
        _dummy_crypt,
    ),
    Scheme(
        "APR1-MD5",
        ("$apr1$",),
        "'$apr1$', a salt of up to 8 characters, '$' and 22 characters",
        *_APR1,
        _cost_crypt,
        _dummy_crypt,
        weak="APR1-MD5 (htpasswd -m) is a weak hash: rehash it with `htpasswd -B`",
    ),
    Scheme(
        "SHA-1",
        ("{SHA}",),
        "'{SHA}' and the base64 of 20 bytes",
        _well_formed_sha1,
        _verify_sha1,
        lambda encoded: "{SHA}",
        _dummy_sha1,
        weak="unsalted SHA-1 (htpasswd -s) is a weak hash: rehash it with `htpasswd -B`",
    ),
)

_REFUSED = {
    "$1$": "MD5-crypt",
    "$2x$": "bcrypt with the 8-bit bug ($2x$)",
    "$md5$": "Sun MD5-crypt",
    "$y$": "yescrypt",
    "$7$": "scrypt",
}
"""Schemes recognized well enough to be named when refused."""

_EXPECTED = "a hash made by `htpasswd -B` (bcrypt), -2 or -5 (SHA-crypt), -m or -s, or argon2"
_MARKER = re.compile(r"\$[A-Za-z0-9_-]{1,12}\$|\{[A-Za-z0-9_-]{1,12}\}")


@attrs.frozen(repr=False)
class PasswordHash:
    """One user's stored hash and its scheme; its repr shows the scheme, not the hash."""

    scheme: Scheme
    encoded: str

    def verify(self, password: bytes) -> bool:
        return self.scheme.verify(self.encoded, password)

    def __repr__(self) -> str:
        return f"<PasswordHash {self.scheme.name}>"


class UserTable:
    """The users of one htpasswd file and their hashes, as loaded (never changed: a reload
    loads a new table)."""

    __slots__ = ("_dummy", "_hashes", "path", "warnings")

    def __init__(
        self,
        path: str,
        hashes: Mapping[str, PasswordHash],
        warnings: tuple[tuple[int, str], ...] = (),
    ) -> None:
        self.path = path
        self._hashes = dict(hashes)
        self.warnings = warnings
        """(line, message) for each weak hash, for the config layer to log at load."""
        self._dummy = _dummy_for(self._hashes.values())

    def __contains__(self, user: object) -> bool:
        return user in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"<UserTable {self.path}: {len(self._hashes)} users>"

    def verify(self, user: str, password: bytes) -> bool:
        """Whether `password` is `user`'s. Slow by design: run it in a thread.

        An unknown user is checked against a dummy hash of the table's most common scheme and
        cost, so that it takes about as long as a known user's check: the time of an answer
        does not tell which users exist."""
        stored = self._hashes.get(user)
        if stored is None:
            self._dummy.verify(password)
            return False
        return stored.verify(password)


def _dummy_for(hashes: Iterable[PasswordHash]) -> PasswordHash:
    """A hash of the scheme and cost most hashes in the table share, that nothing matches
    (bcrypt at htpasswd's default cost for an empty table)."""
    stored = list(hashes)
    if not stored:
        bcrypt_scheme = SCHEMES[0]
        return PasswordHash(bcrypt_scheme, _dummy_bcrypt("$2y$05$"))
    by_cost = collections.Counter(h.scheme.cost(h.encoded) for h in stored)
    common = by_cost.most_common(1)[0][0]
    model = next(h for h in stored if h.scheme.cost(h.encoded) == common)
    return PasswordHash(model.scheme, model.scheme.dummy(model.encoded))


def load_htpasswd(path: str) -> UserTable:
    """The users of the htpasswd file `path`; raises ConfigErrors naming the file and, for a
    bad line, the line (an unreadable file, a malformed line, an unknown or refused scheme, a
    user named twice), without ever showing a hash beyond its scheme's prefix."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigErrors(
            [ConfigError(path, None, None, None, "a readable htpasswd file", e.strerror or str(e))]
        ) from None
    return parse_htpasswd(data, path)


def parse_htpasswd(data: bytes, path: str) -> UserTable:
    """The users of `data`, the htpasswd file `path`; raises ConfigErrors listing every bad
    line (load_htpasswd() without the reading)."""
    errors: list[ConfigError] = []
    warnings: list[tuple[int, str]] = []
    hashes: dict[str, PasswordHash] = {}
    first_line: dict[str, int] = {}

    def refuse(number: int, expected: str, found: str, hint: str | None = None) -> None:
        errors.append(ConfigError(path, number, None, None, expected, found, hint))

    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            refuse(number, "UTF-8 text", "bytes that are not UTF-8")
            continue
        if not line or line.startswith("#"):
            continue
        user, colon, rest = line.partition(":")
        # The line may be a plain-text password: never show it.
        if not colon:
            refuse(number, "'user:hash'", f"a line of {len(line)} characters without ':'")
            continue
        if not user or user != user.strip() or not user.isprintable():
            refuse(number, "a user name of printable characters before ':'", repr(user))
            continue
        if user in first_line:
            refuse(number, "each user once", f"{user!r} again (first on line {first_line[user]})")
            continue
        first_line[user] = number
        encoded = rest.partition(":")[0].strip()
        scheme = next((s for s in SCHEMES if encoded.startswith(s.prefixes)), None)
        if scheme is None:
            found = f"user {user!r} with {_describe_unknown(encoded)}"
            refuse(number, _EXPECTED, found, "rehash it with `htpasswd -B`")
            continue
        if not scheme.well_formed(encoded):
            marker = next(p for p in scheme.prefixes if encoded.startswith(p))
            found = f"user {user!r} with '{marker}…' of {len(encoded)} characters"
            refuse(number, f"a well-formed {scheme.name} hash ({scheme.shape})", found)
            continue
        hashes[user] = PasswordHash(scheme, encoded)
        if scheme.weak:
            warnings.append((number, f"user {user!r}: {scheme.weak}"))
    if errors:
        raise ConfigErrors(errors)
    return UserTable(path, hashes, tuple(warnings))


def _describe_unknown(encoded: str) -> str:
    """What an unrecognized hash looks like, naming at most its scheme's marker: the value
    may be a password written in plain text."""
    if not encoded:
        return "an empty hash"
    marker = _MARKER.match(encoded)
    if marker is None:
        return (
            f"{len(encoded)} characters without a scheme prefix "
            "(crypt(3) DES from `htpasswd -d`, or a plain-text password from `htpasswd -p`)"
        )
    name = _REFUSED.get(marker.group())
    if name is not None:
        return f"{name} ('{marker.group()}…'), which proxyd refuses"
    return f"an unknown scheme '{marker.group()}…'"
