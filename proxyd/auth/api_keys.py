"""The API key method: a client presents a key in a header or a query parameter; a key file
names each key by the SHA-256 of the key, never the key itself.

The key file holds one key a line, `NAME SHA256-HEX` (what `printf %s KEY | sha256sum`
prints, lower or upper case), with blank lines and lines starting with '#' skipped. A name is
1 to 128 letters, digits and `. _ - @ + :`, since it goes to the access log and upstream in a
header. The key never goes upstream nor to a log: `ApiKeyAuth.strip()` takes it out of the
request before it is sent on.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Mapping, Sequence

from proxyd.auth.result import Decision, Denied, Granted
from proxyd.config.errors import ConfigError, ConfigErrors

Headers = list[tuple[bytes, bytes]]

_NAME = re.compile(r"[A-Za-z0-9._@+:-]{1,128}")
_NAME_CHARACTERS = "1 to 128 letters, digits and . _ - @ + :"
_DIGEST = re.compile(r"[0-9A-Fa-f]{64}")


def key_digest(key: bytes) -> str:
    """What the key file holds for `key`: the hex SHA-256 of its bytes."""
    return hashlib.sha256(key).hexdigest()


class KeyTable:
    """The named keys of one key file, by the SHA-256 of each key, as loaded (a reload loads a
    new table); its repr shows how many, not which."""

    __slots__ = ("_names", "path")

    def __init__(self, path: str, names: Mapping[bytes, str]) -> None:
        self.path = path
        self._names = dict(names)
        """SHA-256 digest (32 bytes) -> the key's name."""

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<KeyTable {self.path}: {len(self._names)} keys>"

    def name_of(self, key: bytes) -> str | None:
        """The name of `key`, or None if it is not in the table.

        A dict lookup by the key's SHA-256, rather than hmac.compare_digest() against every
        digest: the lookup's time may depend on how many leading bytes of the presented key's
        digest equal a stored one, but the client chooses a key, not its digest, so steering a
        digest byte by byte towards a stored one is a search for a SHA-256 preimage, which
        timing does not shorten. Hashing the key takes a time that depends only on its length.
        The lookup is also O(1) in the number of keys, where a scan with no early exit is not.
        """
        return self._names.get(hashlib.sha256(key).digest())


def load_api_keys(path: str) -> KeyTable:
    """The keys of the key file `path`; raises ConfigErrors naming the file and, for a bad
    line, the line (an unreadable file, a malformed line or digest, a name or a digest
    written twice), without ever showing a digest or what may be a key."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigErrors(
            [ConfigError(path, None, None, None, "a readable API key file", e.strerror or str(e))]
        ) from None
    return parse_api_keys(data, path)


def parse_api_keys(data: bytes, path: str) -> KeyTable:
    """The keys of `data`, the key file `path`; raises ConfigErrors listing every bad line
    (load_api_keys() without the reading)."""
    errors: list[ConfigError] = []
    names: dict[bytes, str] = {}
    name_line: dict[str, int] = {}
    digest_line: dict[bytes, int] = {}

    def refuse(number: int, expected: str, found: str, hint: str | None = None) -> None:
        errors.append(ConfigError(path, number, None, None, expected, found, hint))

    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            refuse(number, "'NAME SHA256-HEX' in ASCII", "bytes that are not ASCII")
            continue
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        # A field may be a key written where its digest should be: never show one.
        if len(fields) != 2:
            refuse(number, "'NAME SHA256-HEX'", f"{len(fields)} fields")
            continue
        name, hex_digest = fields
        if not _NAME.fullmatch(name):
            bad = next((c for c in name if not _NAME.fullmatch(c)), None)
            found = f"{bad!r} in the name" if bad else f"a name of {len(name)} characters"
            refuse(number, f"a name of {_NAME_CHARACTERS}", found)
            continue
        if not _DIGEST.fullmatch(hex_digest):
            refuse(
                number,
                "a SHA-256 digest of 64 hex digits after the name",
                f"{len(hex_digest)} characters, not all hex digits"
                if len(hex_digest) == 64
                else f"{len(hex_digest)} characters",
                "write the key's digest, as `printf %s KEY | sha256sum` prints it, not the key",
            )
            continue
        digest = bytes.fromhex(hex_digest)
        if name in name_line:
            refuse(number, "each name once", f"{name!r} again (first on line {name_line[name]})")
            continue
        if digest in digest_line:
            first = digest_line[digest]
            found = f"the digest of {names[digest]!r} (line {first}) again for {name!r}"
            refuse(number, "each key once", found)
            continue
        name_line[name] = number
        digest_line[digest] = number
        names[digest] = name
    if errors:
        raise ConfigErrors(errors)
    return KeyTable(path, names)


def _query_name(piece: str) -> str:
    """The decoded name of one `name=value` piece of a query string."""
    return urllib.parse.unquote_plus(piece.partition("=")[0])


def strip_query(query: str, param: str) -> str:
    """`query` (without its '?') without any `param=...` piece (the parameter's name compared
    once decoded, as check() reads it); every other piece is kept as it was written, in order.
    """
    if param not in query and "%" not in query and "+" not in query:
        return query  # no piece can decode to `param`: the common case, without a split

    return "&".join(piece for piece in query.split("&") if _query_name(piece) != param)


class ApiKeyAuth:
    """Decides requests' API keys against `table`.

    The key is read from the header `header` (its name compared case-insensitively) or, where
    the request has none, the query parameter `query_param` (either may be None, not both);
    a value empty or all spaces counts as none. A header or parameter given twice is
    "malformed": which of two keys to judge would be a guess.

    A request granted carries the key's name as its identity, and upstream in the header
    `name_header` if set. A request without a key is answered 401 "missing", one with an
    unknown key 401 "unknown_key". A 401 must carry a challenge (RFC 9110 section 15.5.2) and
    no scheme is registered for API keys, so proxyd names one: `WWW-Authenticate: ApiKey
    realm="..."` (an API client goes by the status; the realm tells a person which keys).
    """

    def __init__(
        self,
        table: KeyTable,
        *,
        header: bytes | None,
        query_param: str | None,
        name_header: bytes | None,
        realm: str,
    ) -> None:
        if header is None and query_param is None:
            raise ValueError("an API key comes from a header, a query parameter or both")
        if not realm.isprintable():
            raise ValueError("a realm is printable text")
        self.table = table
        self.header = header
        self.query_param = query_param
        self._header = header.lower() if header is not None else None
        self._name_header = name_header
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
        fields = ((b"WWW-Authenticate", f'ApiKey realm="{quoted}"'.encode()),)
        self._denied = {
            reason: Denied(401, reason, fields)
            for reason in ("missing", "malformed", "unknown_key")
        }

    def __repr__(self) -> str:
        return f"<ApiKeyAuth header={self.header!r} query_param={self.query_param!r}>"

    def check(self, headers: Sequence[tuple[bytes, bytes]], query: str) -> Decision:
        """The decision for a request with header fields `headers` and query string `query`
        (without its '?')."""
        key: bytes | None = None
        if self._header is not None:
            values = [v.strip(b" \t") for n, v in headers if n.lower() == self._header]
            values = [v for v in values if v]
            if len(values) > 1:
                return self._denied["malformed"]
            key = values[0] if values else None
        if key is None and self.query_param is not None and query:
            param = self.query_param
            found = [
                urllib.parse.unquote_to_bytes(piece.partition("=")[2].replace("+", " "))
                for piece in query.split("&")
                if _query_name(piece) == param
            ]
            found = [v for v in (f.strip(b" ") for f in found) if v]
            if len(found) > 1:
                return self._denied["malformed"]
            key = found[0] if found else None
        if key is None:
            return self._denied["missing"]
        name = self.table.name_of(key)
        if name is None:
            return self._denied["unknown_key"]
        upstream = ((self._name_header, name.encode()),) if self._name_header else ()
        return Granted(name, upstream)

    def strip(self, headers: Headers, query: str) -> tuple[Headers, str]:
        """`headers` and `query` without the key (the header's fields and the parameter's
        pieces), as they are to be sent upstream, whatever the decision."""
        if self._header is not None:
            headers = [(n, v) for n, v in headers if n.lower() != self._header]
        if self.query_param is not None:
            query = strip_query(query, self.query_param)
        return headers, query
