"""`[auth NAME]` sections: their keys' parsers, and the AuthConfig each one makes once its keys
have parsed (proxyd.config.cross_checks): which keys go with which `type`, the files read
(htpasswd users, API keys, PEM keys), every problem reported on its key's line, a problem
inside a file naming that file and its line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxyd.auth import api_keys, htpasswd, jwks, jwt
from proxyd.config import values as v
from proxyd.config.auth_model import (
    AUTH_TYPES,
    ApiKeyAuthConfig,
    AuthConfig,
    BasicAuthConfig,
    ForwardAuthConfig,
    JwtAuthConfig,
)
from proxyd.config.errors import ConfigErrors, Invalid
from proxyd.config.ini import Section
from proxyd.config.security import Problems
from proxyd.config.security_model import OFF

TYPE_KEYS: Mapping[str, tuple[str, ...]] = {
    "basic": ("users", "cache_time", "max_pending", "user_header"),
    "api_key": ("keys", "header", "query_param", "name_header"),
    "jwt": (
        "algorithms",
        "keys",
        "jwks",
        "issuer",
        "audience",
        "leeway",
        "claims",
        "identity_claim",
        "jwks_refresh",
        "jwks_min_refresh",
    ),
    "forward": ("url", "timeout", "request_headers", "copy_headers", "cache_time", "cache_key"),
}
"""The keys each type takes beside `type` and `realm` (forward has no realm: the auth
service answers its own challenges)."""

DEFAULT_FORWARD_HEADERS = ("Authorization", "Cookie")


def realm(text: str) -> str:
    value = text.strip()
    if not value or not value.isascii() or not value.isprintable():
        raise Invalid("a realm of printable ASCII", repr(value) if value else "nothing")
    return value


def header_or_off(text: str) -> str | None:
    """A header field name, or `off` (None: no field)."""
    value = text.strip()
    if value == OFF:
        return None
    return v.header_name(value)


def names(text: str) -> tuple[str, ...]:
    """Header field names separated by spaces, commas or lines, as written."""
    found = tuple(v.header_name(word) for word in text.replace(",", " ").split())
    if not found:
        raise Invalid("header field names", "nothing")
    return found


def query_param(text: str) -> str:
    return v.token("a query parameter name")(text)


def algorithms(text: str) -> tuple[str, ...]:
    chosen = jwt.validate_algorithms(text.replace(",", " ").split())
    hmac = sorted(jwt.HMAC_ALGORITHMS.intersection(chosen))
    if hmac:
        raise Invalid(
            "public-key algorithms (RS*, PS*, ES*, EdDSA)",
            repr(hmac[0]),
            "an HMAC algorithm needs a shared secret, which [auth] does not take; beside "
            "public keys it would let a token signed with a public key pass (RFC 8725 2.1)",
        )
    return chosen


def claims(text: str) -> tuple[tuple[str, str], ...]:
    """Lines of `CLAIM HEADER`: the claim's value passed upstream in that field."""
    result: list[tuple[str, str]] = []
    errors: list[Invalid] = []
    for index, line in v.each_line(text):
        words = line.split()
        try:
            if len(words) != 2:
                raise Invalid("'CLAIM HEADER' such as 'sub X-Auth-User'", repr(line.strip()))
            result.append((words[0], v.header_name(words[1])))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not result:
        raise Invalid("'CLAIM HEADER' lines", "nothing")
    return tuple(result)


def text_value(text: str) -> str:
    value = text.strip()
    if not value:
        raise Invalid("a value", "nothing")
    return value


def url(text: str) -> str:
    return jwks.validate_url(text.strip())


def auth_section(section: Section, fields: dict[str, Any]) -> Problems:
    """Replace `fields` (the keys, parsed) by AuthConfig's: name, type, realm, method."""
    kind = fields["type"]
    problems: Problems = []
    for key in section.entries:
        if key not in _allowed(kind):
            takers = [t for t in AUTH_TYPES if key in _allowed(t)]
            problems.append(
                (
                    key,
                    Invalid(
                        f"'{key}' only with type = {' or '.join(takers)}",
                        f"type = {kind}",
                    ),
                )
            )
    if problems:
        return problems
    method, problems = _BUILDERS[kind](section, fields)
    if method is None:
        return problems
    name = fields["name"]
    realm = fields.get("realm", name)
    fields.clear()
    fields.update(name=name, type=kind, realm=realm, method=method)
    return problems


def _allowed(kind: str) -> tuple[str, ...]:
    return ("type", *(("realm",) if kind != "forward" else ()), *TYPE_KEYS[kind])


def _file_problems(key: str, errors: ConfigErrors) -> Problems:
    """A file's ConfigErrors (each naming the file and maybe its line) as problems of `key`."""
    found: list[Invalid] = []
    for error in errors.errors:
        where = f"in {error.path} line {error.line}" if error.line else repr(error.path)
        found.append(Invalid(error.expected, f"{error.found} ({where})", error.hint))
    return [(key, found[0] if len(found) == 1 else v.Invalids(found))]


def _required(section: Section, key: str, what: str) -> Problems:
    return [(key, Invalid(f"a '{key}' key ({what})", "none"))]


def _basic(section: Section, fields: dict[str, Any]) -> tuple[Any, Problems]:
    path = fields.get("users")
    if path is None:
        return None, _required(section, "users", "the htpasswd file")
    try:
        users = htpasswd.load_htpasswd(path)
    except ConfigErrors as e:
        return None, _file_problems("users", e)
    user_header = fields.get("user_header", "X-Auth-User")
    return BasicAuthConfig(
        users_file=path,
        users=users,
        cache_time=fields.get("cache_time", 300.0),
        max_pending=fields.get("max_pending", 64),
        user_header=user_header,
    ), []


def _api_key(section: Section, fields: dict[str, Any]) -> tuple[Any, Problems]:
    paths = fields.get("keys")
    if paths is None:
        return None, _required(section, "keys", "the file of key names and SHA-256 digests")
    if len(paths) != 1:
        return None, [("keys", Invalid("one key file", f"{len(paths)} files"))]
    header = fields.get("header", "X-API-Key")
    param = fields.get("query_param")
    if header is None and param is None:
        return None, [("header", Invalid("a header, a query_param, or both", "header = off alone"))]
    try:
        table = api_keys.load_api_keys(paths[0])
    except ConfigErrors as e:
        return None, _file_problems("keys", e)
    return ApiKeyAuthConfig(
        keys_file=paths[0],
        keys=table,
        header=header,
        query_param=param,
        name_header=fields.get("name_header", "X-Auth-Key"),
    ), []


def _jwt(section: Section, fields: dict[str, Any]) -> tuple[Any, Problems]:
    if "algorithms" not in fields:
        return None, _required(section, "algorithms", "the JWS algorithms accepted, e.g. RS256")
    paths = fields.get("keys")
    source = fields.get("jwks")
    if (paths is None) == (source is None):
        found = "both" if paths is not None else "neither"
        return None, [(None, Invalid("either 'keys' (PEM files) or 'jwks' (a URL)", found))]
    keys = None
    if paths is not None:
        try:
            keys = jwt.load_pem_keys(paths)
        except Invalid as e:
            return None, [("keys", e)]
    refresh = fields.get("jwks_refresh", 300.0)
    least = fields.get("jwks_min_refresh", 10.0)
    if least > refresh:
        return None, [
            (
                "jwks_min_refresh",
                Invalid(f"at most jwks_refresh ({refresh:g}s)", f"{least:g}s"),
            )
        ]
    for key in ("jwks_refresh", "jwks_min_refresh"):
        if key in fields and source is None:
            return None, [(key, Invalid(f"'{key}' only with jwks", "keys (PEM files)"))]
    return JwtAuthConfig(
        algorithms=fields["algorithms"],
        key_files=tuple(paths or ()),
        keys=keys,
        jwks=source,
        issuer=fields.get("issuer"),
        audience=fields.get("audience"),
        leeway=fields.get("leeway", 30.0),
        claims=fields.get("claims", ()),
        identity_claim=fields.get("identity_claim", "sub"),
        jwks_refresh=refresh,
        jwks_min_refresh=least,
    ), []


def _forward(section: Section, fields: dict[str, Any]) -> tuple[Any, Problems]:
    if "url" not in fields:
        return None, _required(section, "url", "the auth service's http:// or https:// URL")
    cache_time = fields.get("cache_time", 0.0)
    cache_key = fields.get("cache_key", ())
    if cache_time > 0 and not cache_key:
        return None, [
            (
                "cache_time",
                Invalid(
                    "a 'cache_key' too (the request fields a decision is remembered by)",
                    f"cache_time = {cache_time:g}s without one",
                ),
            )
        ]
    if cache_key and cache_time <= 0:
        return None, [("cache_key", Invalid("'cache_key' only with a cache_time", "none"))]
    return ForwardAuthConfig(
        url=fields["url"],
        timeout=fields.get("timeout", 2.0),
        request_headers=fields.get("request_headers", DEFAULT_FORWARD_HEADERS),
        copy_headers=fields.get("copy_headers", ()),
        cache_time=cache_time,
        cache_key=cache_key,
    ), []


_BUILDERS: Mapping[str, Callable[[Section, dict[str, Any]], tuple[Any, Problems]]] = {
    "basic": _basic,
    "api_key": _api_key,
    "jwt": _jwt,
    "forward": _forward,
}

__all__ = ["TYPE_KEYS", "AuthConfig", "auth_section"]
