"""Choosing a route for a request: path normalisation, the route table, upstream paths, and
the routes that can never be chosen. Sans-IO: plain functions of strings.

The route for a request is the most specific route that matches it, whatever the order of
the `routes` lines (as nginx picks the longest prefix). Of the matching routes, the winner is
the first by, in turn:

1. host: an exact host name, then a wildcard `*.suffix` (a longer suffix first), then no host;
2. path: the longer prefix;
3. methods: a route with a method list before one without; of two lists, the shorter one;
4. headers: more header conditions;
5. the earlier line.

`*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`. A path
prefix is a plain string prefix: `path /api` matches `/api`, `/api/x` and `/apix`; write
`/api/` for the directory only.

RouteTable precomputes this order once: routes by exact host in a dict, wildcard routes by
suffix (tried longest first, one dict lookup per label of the request's host), then the
routes without host; each group is scanned in order with cheap string checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from proxyd.config.model import ProxyAction, RouteConfig, RouteMatch

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_INVALID: Final = re.compile(r"[^\x21-\x7e]")
"""Controls, space, DEL and anything beyond ASCII: not in an origin-form path (RFC 9112 3.2.1)."""
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape_unreserved(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + match.group(1).upper()


def normalize_path(path: str) -> str | None:
    """Percent-decode only unreserved characters (RFC 3986 2.3), upper-case remaining %xx,
    merge repeated slashes (as nginx's merge_slashes), remove dot segments (RFC 3986 5.2.4,
    also %2e-encoded ones), never above root. None when the path is not a valid origin-form
    path (does not start with '/', bad %-escape, control characters, space, non-ASCII)."""
    if not path.startswith("/") or _INVALID.search(path):
        return None
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            return None
        path = _ESCAPE.sub(_unescape_unreserved, path)
    if "//" not in path and "/." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:-1]:
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    last = segments[-1]
    if last == "..":
        if out:
            out.pop()
        last = ""
    elif last == ".":
        last = ""
    out.append(last)
    return "/" + "/".join(out)


def _order(route: RouteConfig, index: int) -> tuple[int, ...]:
    """Sort key: the most specific route first (the module docstring's rule)."""
    match = route.match
    if match.host is None:
        host_class, host_length = 2, 0
    elif match.host.startswith("*."):
        host_class, host_length = 1, len(match.host)
    else:
        host_class, host_length = 0, 0
    methods = (0, len(match.methods)) if match.methods is not None else (1, 0)
    return (
        host_class,
        -host_length,
        -len(match.path),
        *methods,
        -len(match.headers),
        route.line,
        index,
    )


def _ranking(routes: Sequence[RouteConfig]) -> list[int]:
    """Indexes of `routes`, most specific first: where two match a request, the first wins."""
    return sorted(range(len(routes)), key=lambda i: _order(routes[i], i))


def _matches_request(match: RouteMatch, path: str, method: str, headers: Mapping[str, str]) -> bool:
    """Everything but the host, which the table's grouping has already checked."""
    if not path.startswith(match.path):
        return False
    if match.methods is not None and method not in match.methods:
        return False
    for name, value in match.headers:
        found = headers.get(name)
        if found is None or (value is not None and found != value):
            return False
    return True


class RouteTable:
    """The routes of one listener, arranged for matching a request quickly."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes: tuple[RouteConfig, ...] = tuple(routes[i] for i in _ranking(routes))
        """Most specific first."""
        self._exact: dict[str, list[RouteConfig]] = {}
        self._wildcard: dict[str, list[RouteConfig]] = {}
        """By suffix with its leading dot: `*.example.com` under `.example.com`."""
        self._any: list[RouteConfig] = []
        self.uses_headers = any(route.match.headers for route in self.routes)
        """Whether any route has header conditions (else match() never reads `headers`)."""
        for route in self.routes:
            host = route.match.host
            if host is None:
                self._any.append(route)
            elif host.startswith("*."):
                self._wildcard.setdefault(host[1:], []).append(route)
            else:
                self._exact.setdefault(host, []).append(route)

    def match(
        self, host: str, path: str, method: str, headers: Mapping[str, str]
    ) -> RouteConfig | None:
        """host: lower-case, no port, no trailing dot ('' when absent); path: normalised;
        headers: lower-case name -> value (repeated fields joined with ', ')."""
        if host:
            for route in self._exact.get(host, ()):
                if _matches_request(route.match, path, method, headers):
                    return route
            if self._wildcard:
                dot = host.find(".")
                while dot > 0:  # `.b.example.com`, `.example.com`, `.com`: longest first
                    for route in self._wildcard.get(host[dot:], ()):
                        if _matches_request(route.match, path, method, headers):
                            return route
                    dot = host.find(".", dot + 1)
        for route in self._any:
            if _matches_request(route.match, path, method, headers):
                return route
        return None


def rewrite_path(route: RouteConfig, path: str) -> str:
    """The path to send upstream for a ProxyAction route: strip_prefix removes
    route.match.path (the result keeps a leading '/': '/v1/x' with prefix '/v1/' is '/x',
    '/v1' with prefix '/v1' is '/'), then the rewrite regex applies (re.sub, count=1). A
    rewrite result without a leading '/' gets one."""
    action = route.action
    if not isinstance(action, ProxyAction):
        return path
    if action.strip_prefix and path.startswith(route.match.path):
        path = path[len(route.match.path) :]
        if not path.startswith("/"):
            path = "/" + path
    if action.rewrite is not None:
        pattern, replacement = action.rewrite
        path = pattern.sub(replacement, path, count=1)
        if not path.startswith("/"):
            path = "/" + path
    return path


def _host_covers(wide: str | None, narrow: str | None) -> bool:
    """Whether every host `narrow` matches is matched by `wide`."""
    if wide is None:
        return True
    if narrow is None:
        return False
    if not wide.startswith("*."):
        return wide == narrow
    suffix = wide[1:]
    if narrow.startswith("*."):
        return narrow[1:].endswith(suffix)
    return narrow.endswith(suffix)


def covers(wide: RouteMatch, narrow: RouteMatch) -> bool:
    """Whether `wide` matches every request that `narrow` matches."""
    if not _host_covers(wide.host, narrow.host):
        return False
    if not narrow.path.startswith(wide.path):
        return False
    if wide.methods is not None and (narrow.methods is None or not narrow.methods <= wide.methods):
        return False
    narrow_headers = dict[str, set[str | None]]()
    for name, value in narrow.headers:
        narrow_headers.setdefault(name, set()).add(value)
    for name, value in wide.headers:
        required = narrow_headers.get(name)
        if required is None or (value is not None and value not in required):
            return False
    return True


def unreachable(routes: Sequence[RouteConfig]) -> list[tuple[RouteConfig, RouteConfig]]:
    """(route, the route that shadows it): routes that can never be chosen because a
    preferred route matches every request they match. In the order of `routes`."""
    ranking = _ranking(routes)
    shadowed: dict[int, int] = {}
    for position, index in enumerate(ranking):
        for earlier in ranking[:position]:
            if covers(routes[earlier].match, routes[index].match):
                shadowed[index] = earlier
                break
    return [(routes[i], routes[shadowed[i]]) for i in range(len(routes)) if i in shadowed]
