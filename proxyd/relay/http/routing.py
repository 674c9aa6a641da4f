"""Choosing a route for a request: path normalisation, the route table, upstream paths, and
the routes that can never be chosen. Sans-IO: plain functions of strings.

The path policy (request_path). A route such as `path /admin/` must hold for every spelling
of a path that a backend reads as /admin/, so the path is normalised before it is matched and
that normal form is what is sent upstream; what cannot be normalised safely is refused (400):

- `%2F` and `%5C` (an encoded slash or backslash) and a raw backslash: Tomcat, IIS, Spring
  and many frameworks decode them, or read a backslash as a slash, after proxyd has matched
  the path (`/public%2F..%2Fadmin/`, `/public\\..\\admin/`). The listener's
  `escaped_slashes` says what to do: `reject` (the default, Envoy's
  path_with_escaped_slashes_action REJECT_REQUEST), `decode` them as `/` and normalise
  (UNESCAPE_AND_FORWARD), or `keep` them as data (KEEP_UNCHANGED; nginx's behaviour);
- a dot segment with path parameters (`..;x`, `.;`): Tomcat and Jetty remove the parameters
  and then the dot segment (`/public/..;/admin/` is their /admin/). Always refused.

Path parameters elsewhere (`/admin;jsessionid=1/x`) are sent on as they are, but routes are
matched on the path without them (`/admin/x`), as Tomcat and Jetty will read it.

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
import string
from collections.abc import Mapping, Sequence
from typing import Final

from proxyd.config.model import ProxyAction, RouteConfig, RouteMatch
from proxyd.relay.http.headers import RequestContext

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_INVALID: Final = re.compile(r"[^\x21-\x7e]")
"""Controls, space, DEL and anything beyond ASCII: not in an origin-form path (RFC 9112 3.2.1)."""
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


_ESCAPED_SLASH: Final = re.compile(r"%(?:2[Ff]|5[Cc])")


class BadPath(ValueError):
    """A request path refused with 400; the message says why."""


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


def request_path(path: str, escaped_slashes: str = "reject") -> str:
    """The normalised path a request is routed on and sent upstream with, under the policy
    of the module's docstring; `escaped_slashes` is one of config.model.ESCAPED_SLASHES.
    Raises BadPath."""
    if "%00" in path:
        # nginx refuses it too: C code behind (CGI, a file system) ends the path there.
        raise BadPath("encoded NUL (%00) in the path")
    if "\\" in path or ("%" in path and _ESCAPED_SLASH.search(path)):
        if escaped_slashes == "reject":
            raise BadPath("encoded slash or backslash in the path (escaped_slashes = reject)")
        if escaped_slashes == "decode":
            path = _ESCAPED_SLASH.sub("/", path.replace("\\", "/"))
    normal = normalize_path(path)
    if normal is None:
        raise BadPath("invalid request path")
    if ";" in normal and any(
        segment.partition(";")[0] in (".", "..") for segment in normal.split("/")
    ):
        raise BadPath("path parameters on a dot segment ('..;')")
    return normal


def without_parameters(path: str) -> str:
    """A normalised path as Tomcat and Jetty read it: each segment's `;parameters` removed
    (RFC 3986 3.3), the result normalised again (`/a;x/;y/b` is `/a/b`)."""
    joined = "/".join(segment.partition(";")[0] for segment in path.split("/"))
    return normalize_path(joined) or "/"


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
        """host: lower-case, no port, no trailing dot ('' when absent); path: normalised
        (matched without its path parameters); headers: lower-case name -> value (repeated
        fields joined with ', ')."""
        if ";" in path:
            path = without_parameters(path)
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


def rewrite_path(route: RouteConfig, path: str, ctx: RequestContext | None = None) -> str:
    """The path to send upstream for a ProxyAction route: strip_prefix removes
    route.match.path (the result keeps a leading '/': '/v1/x' with prefix '/v1/' is '/x',
    '/v1' with prefix '/v1' is '/'; a path that matched only without its path parameters
    loses them), then the rewrite replaces the regex's first match with its template, whose
    `{1}` / `{name}` are the match's groups (an unmatched group is empty) and other names the
    request's variables (from `ctx`; empty without one). A rewrite result without a leading
    '/' gets one."""
    action = route.action
    if not isinstance(action, ProxyAction):
        return path
    if action.strip_prefix and not path.startswith(route.match.path) and ";" in path:
        path = without_parameters(path)  # the route matched it so: parameters go with the prefix
    if action.strip_prefix and path.startswith(route.match.path):
        path = path[len(route.match.path) :]
        if not path.startswith("/"):
            path = "/" + path
    if action.rewrite is not None:
        pattern, replacement = action.rewrite
        match = pattern.search(path)
        if match is not None:
            path = path[: match.start()] + _fill(replacement, match, ctx) + path[match.end() :]
        if not path.startswith("/"):
            path = "/" + path
    return path


_rewrites: dict[str, list[tuple[str, str | None]]] = {}
"""Parsed rewrite templates: (literal, field or None) parts, as string.Formatter reads them."""


def _fill(template: str, match: re.Match[str], ctx: RequestContext | None) -> str:
    parts = _rewrites.get(template)
    if parts is None:
        if len(_rewrites) >= 1000:  # templates come from configs: only reloads add more
            _rewrites.clear()
        parts = _rewrites[template] = [
            (literal, field) for literal, field, _, _ in string.Formatter().parse(template)
        ]
    out = []
    groups = match.re.groupindex
    for literal, field in parts:
        out.append(literal)
        if field is None:
            continue
        if field.isdigit():
            out.append(match.group(int(field)) or "")
        elif field in groups:
            out.append(match.group(field) or "")
        elif ctx is not None:
            out.append(getattr(ctx, field))
    return "".join(out)


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
