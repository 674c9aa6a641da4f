"""CORS per route: the Fetch standard's CORS protocol answered at the edge, as Envoy's CORS
filter does (https://fetch.spec.whatwg.org/#http-cors-protocol).

A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered by proxyd and
never reaches a server: 204 with the Access-Control-Allow-* fields when the origin, the method
and every requested header are allowed; otherwise 403 without any CORS field (a Reject: the
reason goes to the access log and the refusal is counted). Browsers fail a preflight either way
(no Access-Control-Allow-Origin, and a status that is not 2xx); 403 rather than a bare 204 (as
rs/cors does) or forwarding it (Envoy's default) tells the operator and a curl user what was
refused. An OPTIONS without Access-Control-Request-Method is not a preflight and goes on.

On every other response (the server's, a filter's answer, proxyd's own errors, so that a
script can read a 401 or a 503), the CORS fields the server set are dropped: the route's policy
is the only voice, so a backend that echoes any Origin with credentials cannot grant what the
policy refuses. Then an allowed Origin gets Access-Control-Allow-Origin (its own value echoed),
Access-Control-Allow-Credentials and Access-Control-Expose-Headers as configured, and
`Vary: Origin` is merged into the response's Vary (on every response, Origin or not, so that a
cache never serves one origin's answer to another). With `cors_origins = *` every response gets
`Access-Control-Allow-Origin: *` and needs no Vary.

Config keys ([route], and [http]/[https] for every route of the listener), parsed by the
config layer into a `CorsPolicy`:

- `cors_origins`: the origins allowed, one or more a line (`parse_origin_patterns`); no
  default, CORS is off without it. Each is `https://app.example.com` (exact: scheme, host and
  port; host case-insensitive; a default port may be written or not), `https://*.example.com`
  (one or more labels before example.com, never example.com itself), `~REGEX` (a Python regular
  expression that must match the whole origin, lower case, default port left out), `null`
  (the opaque origin of sandboxed frames and file: pages: only when listed), or `*` alone
  (any origin, `null` too; not with credentials).
- `cors_methods`: methods allowed besides GET, HEAD and POST, which browsers never preflight
  for their method (proxyd.config.values.methods); default `GET,HEAD,POST`; `*` for any (not
  with credentials).
- `cors_headers`: request header names allowed (proxyd.config.values.header_name each);
  default none; `*` for any but Authorization, which must be listed (as Fetch reads `*`; not
  with credentials). The safelisted headers (Accept, Content-Type with a form type...) need no
  allowing; Content-Type: application/json does.
- `cors_expose_headers`: response header names a script may read beyond the safelisted
  ones; default none; `*` for all (not with credentials).
- `cors_credentials`: `on` sends Access-Control-Allow-Credentials: true (cookies, HTTP auth);
  default off.
- `cors_max_age`: how long a browser may cache a preflight's answer (a duration, whole
  seconds); default unset, not sent (browsers then keep it 5 s; Chromium caps it at 2 h).

A browser test should check: a page on one origin calling proxyd on another with fetch(),
credentialed (cookie sent, readable answer) and not; a refused origin, method and header each
failing with a TypeError; an exposed header readable through `response.headers`; a preflight
answered once within max-age (no second OPTIONS in the server's log).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import attrs

from proxyd.config.errors import Invalid
from proxyd.config.http_values import TCHAR, is_hostname
from proxyd.filters.api import Answer, Exchange, Headers, Reject, header

SAFELISTED_METHODS: Final = frozenset({"GET", "HEAD", "POST"})
"""Methods a browser sends cross-origin without a preflight for the method (Fetch: a
CORS-safelisted method); it allows them whatever Access-Control-Allow-Methods says."""

DEFAULT_METHODS: Final = SAFELISTED_METHODS

_TOKEN: Final = re.compile(rf"{TCHAR}+")
_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]*")
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
_LABEL: Final = r"[a-z0-9_-]+"
_EXAMPLE: Final = "such as https://app.example.com, https://*.example.com, ~REGEX, null or *"
_VARY_PREFLIGHT: Final = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def normalize_origin(origin: str) -> str:
    """An Origin value as patterns match it: lower case, without the scheme's default port.
    (Browsers already send it so; `null` stays `null`.)"""
    value = origin.strip().lower()
    if value.startswith("https://") and value.endswith(":443"):
        return value[:-4]
    if value.startswith("http://") and value.endswith(":80"):
        return value[:-3]
    return value


@attrs.frozen
class OriginPatterns:
    """`cors_origins`, compiled: a set lookup for exact origins, one regular expression for
    every wildcard origin, the operator's own regular expressions last."""

    texts: tuple[str, ...]
    """The patterns as written."""
    any_origin: bool = False
    null: bool = False
    exact: frozenset[str] = frozenset()
    wildcards: re.Pattern[str] | None = None
    regexes: tuple[re.Pattern[str], ...] = ()

    def matches(self, origin: str) -> bool:
        if self.any_origin:
            return True
        value = normalize_origin(origin)
        if value == "null":
            return self.null
        if value in self.exact:
            return True
        if self.wildcards is not None and self.wildcards.fullmatch(value):
            return True
        return any(regex.fullmatch(value) for regex in self.regexes)


def parse_origin_patterns(texts: Iterable[str]) -> OriginPatterns:
    """`cors_origins`' items (see the module's docstring) -> OriginPatterns. Raises Invalid (a
    ValueError; `value_line` is the item's index) naming what is wrong with a pattern."""
    items = [text.strip() for text in texts]
    if not items:
        raise Invalid(f"at least one origin ({_EXAMPLE})", "nothing")
    null = False
    exact: list[str] = []
    wildcards: list[str] = []
    regexes: list[re.Pattern[str]] = []
    for index, text in enumerate(items):
        try:
            if text == "*":
                if len(items) > 1:
                    raise Invalid("'*' alone (it allows every origin)", "other origins beside it")
                return OriginPatterns(texts=("*",), any_origin=True)
            if text.lower() == "null":
                null = True
            elif text.startswith("~"):
                regexes.append(_regex(text))
            else:
                origin, wildcard = _origin(text)
                if wildcard:
                    wildcards.append(origin)
                else:
                    exact.append(origin)
        except Invalid as e:
            raise Invalid(e.expected, e.found, e.hint, value_line=index) from None
    return OriginPatterns(
        texts=tuple(items),
        null=null,
        exact=frozenset(exact),
        wildcards=re.compile("|".join(f"(?:{w})" for w in wildcards)) if wildcards else None,
        regexes=tuple(regexes),
    )


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text[1:], re.IGNORECASE)
    except re.error as e:
        raise Invalid("a regular expression after '~'", f"{text!r} ({e})") from None


def _origin(text: str) -> tuple[str, bool]:
    """An exact origin, normalized; or a wildcard origin as a regular expression (True)."""
    scheme, sep, rest = text.lower().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        hint = f"did you mean 'https://{text}'?" if not sep and is_hostname(text) else None
        raise Invalid(f"an origin, scheme://host[:port], {_EXAMPLE}", repr(text), hint)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
    if end >= 0:
        raise Invalid(
            "an origin without a path (scheme://host[:port])",
            repr(text),
            f"did you mean '{text[: len(scheme) + 3 + end]}'?" if end else None,
        )
    if "@" in rest:
        raise Invalid("an origin without user information (scheme://host[:port])", repr(text))
    host, port = rest, ""
    bracket = rest.rfind("]")
    colon = rest.rfind(":")
    if colon > bracket:
        host, port = rest[:colon], rest[colon + 1 :]
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise Invalid("a port from 1 to 65535 after the host", repr(text))
        port = str(int(port))
    if port == _DEFAULT_PORTS.get(scheme):
        port = ""
    suffix = f":{port}" if port else ""
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise Invalid("'*' only as a whole first label, as in https://*.example.com", repr(text))
    if not is_hostname(name):
        raise Invalid("a host name in ASCII (xn-- for international names) or an IP", repr(text))
    if wildcard:
        escaped = re.escape(f"{name}{suffix}")
        return rf"{re.escape(scheme)}://(?:{_LABEL}\.)+{escaped}", True
    return f"{scheme}://{name}{suffix}", False


def _methods(values: Iterable[str]) -> frozenset[str]:
    return frozenset(value.strip() for value in values)


def _names(values: Iterable[str]) -> frozenset[str]:
    return frozenset(value.strip().lower() for value in values)


def _list(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(value.strip() for value in values)


@attrs.frozen
class CorsPolicy:
    """A route's CORS policy (the `cors_*` keys): what a cross-origin script may do."""

    origins: OriginPatterns
    methods: frozenset[str] = attrs.field(default=DEFAULT_METHODS, converter=_methods)
    headers: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    """Request header names allowed, lower case; `*` for any but Authorization."""
    expose_headers: tuple[str, ...] = attrs.field(default=(), converter=_list)
    credentials: bool = False
    max_age: int | None = None

    def __attrs_post_init__(self) -> None:
        for what, names in (
            ("cors_methods", self.methods),
            ("cors_headers", self.headers),
            ("cors_expose_headers", self.expose_headers),
        ):
            bad = sorted(name for name in names if not _TOKEN.fullmatch(name))
            if bad:
                raise Invalid(f"{what}: tokens (letters, digits and !#$%&'*+-.^_`|~)", repr(bad[0]))
        if self.max_age is not None and self.max_age < 0:
            raise Invalid("cors_max_age: a duration of 0 s or more", str(self.max_age))
        if not self.credentials:
            return
        # With credentials a browser takes `*` literally (Fetch, CORS check and the
        # Access-Control-Allow-* fields' wildcards): it would refuse every request.
        for what, wildcard in (
            ("cors_origins", self.origins.any_origin),
            ("cors_methods", "*" in self.methods),
            ("cors_headers", "*" in self.headers),
            ("cors_expose_headers", "*" in self.expose_headers),
        ):
            if wildcard:
                raise Invalid(
                    f"{what}: names listed one by one when cors_credentials is on (browsers "
                    "refuse '*' on a credentialed request)",
                    "'*'",
                )


class Cors:
    """The route's CORS policy on its requests: preflights answered, CORS fields on the other
    responses (see the module's docstring)."""

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy
        self._origins = policy.origins
        self._any_method = "*" in policy.methods
        self._methods = policy.methods | SAFELISTED_METHODS
        self._allow_methods = ", ".join(sorted(policy.methods)).encode("ascii")
        self._any_header = "*" in policy.headers
        self._headers = policy.headers - {"*"}
        self._credentials: Headers = (
            [(b"Access-Control-Allow-Credentials", b"true")] if policy.credentials else []
        )
        self._expose: Headers = (
            [(b"Access-Control-Expose-Headers", ", ".join(policy.expose_headers).encode("ascii"))]
            if policy.expose_headers
            else []
        )
        self._max_age: Headers = (
            [(b"Access-Control-Max-Age", b"%d" % policy.max_age)]
            if policy.max_age is not None
            else []
        )
        self._everyone: Headers = [(b"Access-Control-Allow-Origin", b"*"), *self._expose]

    def request_head(self, exchange: Exchange) -> Answer | None:
        if exchange.method != "OPTIONS":
            return None
        fields = exchange.request_headers
        origin = header(fields, b"origin")
        method = header(fields, b"access-control-request-method")
        if origin is None or method is None:
            return None  # not a preflight: the server answers it
        return self._preflight(
            origin, method.strip(), header(fields, b"access-control-request-headers")
        )

    def _preflight(self, origin: str, method: str, requested: str | None) -> Answer:
        if not self._origins.matches(origin):
            return Reject(403, f"CORS preflight: origin {origin[:100]!r} not allowed")
        if not (method in self._methods or (self._any_method and _TOKEN.fullmatch(method))):
            return Reject(403, f"CORS preflight: method {method[:40]!r} not allowed")
        names = [] if requested is None else [n for n in _split(requested) if n]
        refused = [n for n in names if not self._header_allowed(n)]
        if refused:
            return Reject(403, f"CORS preflight: header {', '.join(refused)[:100]} not allowed")
        allow_origin = b"*" if self._origins.any_origin else origin.encode("latin-1")
        fields: Headers = [(b"Access-Control-Allow-Origin", allow_origin), *self._credentials]
        allow_methods = method.encode("latin-1") if self._any_method else self._allow_methods
        fields.append((b"Access-Control-Allow-Methods", allow_methods))
        if names:
            fields.append((b"Access-Control-Allow-Headers", ", ".join(names).encode("latin-1")))
        fields += self._max_age
        fields.append((b"Vary", _VARY_PREFLIGHT))
        return Answer(204, headers=fields)

    def _header_allowed(self, name: str) -> bool:
        if name in self._headers:
            return True
        # Fetch: `*` in Access-Control-Allow-Headers never covers Authorization.
        return self._any_header and name != "authorization" and _TOKEN.fullmatch(name) is not None

    def response_head(self, exchange: Exchange) -> None:
        fields = exchange.response_headers
        # Every CORS response field starts so (Allow-*, Expose-Headers, Max-Age).
        kept = [f for f in fields if not f[0].lower().startswith(b"access-control-")]
        if self._origins.any_origin:
            kept += self._everyone
        else:
            vary_origin(kept)
            origin = header(exchange.request_headers, b"origin")
            if origin is not None and self._origins.matches(origin):
                kept.append((b"Access-Control-Allow-Origin", origin.encode("latin-1")))
                kept += self._credentials
                kept += self._expose
        fields[:] = kept


def _split(values: str) -> list[str]:
    return [part.strip().lower() for part in values.split(",")]


def vary_origin(fields: Headers) -> None:
    """Add Origin to the response's Vary: to the last Vary field's list, or as a new field;
    nothing when Vary already names Origin or is `*`."""
    index = -1
    for i, (name, value) in enumerate(fields):
        if name.lower() == b"vary":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"origin" in tokens or b"*" in tokens:
                return
            index = i
    if index < 0:
        fields.append((b"Vary", b"Origin"))
        return
    name, value = fields[index]
    fields[index] = (name, value + b", Origin" if value.strip() else b"Origin")
