"""The cache key of a request (RFC 9111 2: the method and the target URI, here with the
settings of its [cache] section), the effective URI that purges match, and the bypass and
no-store conditions, sans-IO.

The primary key is the scheme, the host (lower case, without the scheme's default port),
the normalized path as routes match it, and the query: with `key_ignore_params` removed
(tracking parameters such as utm_source), and sorted when `key_sort_params` is set (so that
`?a=1&b=2` and `?b=2&a=1` share an entry); then the values of `key_headers`. GET and HEAD
share a key: a HEAD is answered from the stored GET (RFC 9110 9.3.2).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

Headers = Sequence[tuple[bytes, bytes]]

_DEFAULT_PORTS: Final = {"http": ":80", "https": ":443"}


@attrs.frozen
class KeyRule:
    ignore_params: frozenset[str] = frozenset()
    """Query parameters left out of the key (by name; a trailing * matches a prefix:
    `utm_*`)."""
    sort_params: bool = False
    headers: tuple[bytes, ...] = ()
    """Request fields (lower case) whose values are part of the key."""


def effective_uri(scheme: str, host: str, path: str, query: str) -> str:
    """scheme://host/path?query, the host in lower case without the scheme's default port:
    what purges by URL and prefix match."""
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def same_origin(target: str, reference: str) -> str | None:
    """`reference` (a Location or Content-Location) resolved against the effective URI
    `target` (RFC 3986 5), as effective_uri writes it; None when it is of another origin
    (RFC 9111 4.4: those are not invalidated) or not a URI."""
    try:
        resolved = urllib.parse.urlsplit(urllib.parse.urljoin(target, reference.strip()))
        port = resolved.port
    except ValueError:
        return None
    base = urllib.parse.urlsplit(target)
    host = (resolved.hostname or "") + ("" if port is None else f":{port}")
    uri = effective_uri(resolved.scheme, host, resolved.path or "/", resolved.query)
    if urllib.parse.urlsplit(uri)[:2] != base[:2]:
        return None
    return uri


def keyed_query(query: str, rule: KeyRule) -> str:
    """The query as the key has it: ignored parameters out, sorted if asked."""
    if not query or not (rule.ignore_params or rule.sort_params):
        return query
    params = [param for param in query.split("&") if param]
    if rule.ignore_params:
        params = [param for param in params if not _ignored(param.partition("=")[0], rule)]
    if rule.sort_params:
        params.sort()
    return "&".join(params)


def _ignored(name: str, rule: KeyRule) -> bool:
    if name in rule.ignore_params:
        return True
    return any(
        pattern.endswith("*") and name.startswith(pattern[:-1]) for pattern in rule.ignore_params
    )


def cache_key(
    scheme: str, host: str, path: str, query: str, headers: Headers, rule: KeyRule
) -> tuple[bytes, str]:
    """(the primary key, the effective URI) of a request."""
    uri = effective_uri(scheme, host, path, query)
    keyed = effective_uri(scheme, host, path, keyed_query(query, rule))
    key = keyed.encode("utf-8", "surrogateescape")
    if rule.headers:
        values = [
            b",".join(value.strip() for name, value in headers if name.lower() == wanted)
            for wanted in rule.headers
        ]
        key += b"\x00" + b"\x00".join(values)
    return key, uri


@attrs.frozen
class Condition:
    """One of `bypass` / `no_store`'s conditions: a cookie, a request field or a query
    parameter that is present, not empty and not "0" (nginx's proxy_cache_bypass)."""

    kind: str
    """"cookie", "header" or "query"."""
    name: str
    """Lower case for a header; as written for a cookie or a parameter."""


def holds(conditions: Iterable[Condition], headers: Headers, query: str) -> str | None:
    """The first condition that holds for this request (as "kind:name"), else None."""
    for condition in conditions:
        value = _value(condition, headers, query)
        if value and value != "0":
            return f"{condition.kind}:{condition.name}"
    return None


def _value(condition: Condition, headers: Headers, query: str) -> str | None:
    if condition.kind == "header":
        wanted = condition.name.encode("latin-1")
        for name, value in headers:
            if name.lower() == wanted:
                return value.decode("latin-1").strip()
        return None
    if condition.kind == "query":
        for param in query.split("&"):
            param_name, _, param_value = param.partition("=")
            if param_name == condition.name:
                return param_value
        return None
    for name, value in headers:
        if name.lower() == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                cookie, _, found = pair.strip().partition("=")
                if cookie == condition.name:
                    return found.strip()
    return None
