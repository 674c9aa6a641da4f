"""The HTTP relay's routing grammar: `routes` lines, `[route NAME]` actions, header rules and
templates. Each parser raises Invalid (one problem) or Invalids (one per bad line).

A routes line is `MATCHERS -> ACTION`:

    host api.example.com path /v1/ method GET,HEAD header X-Canary=1 -> pool api strip_prefix

Matchers: `host H`, `path P`, `method M[,M...]` (each at most once) and `header NAME[=VALUE]`
(any number). Actions: `pool NAME [strip_prefix] [rewrite REGEX REPLACEMENT] [host NAME]`,
`redirect CODE TEMPLATE`, `respond CODE [BODY]`, `route NAME` (a `[route NAME]` section).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping

import attrs

from proxyd.config import values as v
from proxyd.config.compress_model import COMPRESS_KEYS, RouteCompress
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.model import (
    FilterConfig,
    HeaderRule,
    ProxyAction,
    RedirectAction,
    RespondAction,
    RouteAction,
    RouteConfig,
    RouteMatch,
    RouteSecurity,
)
from proxyd.config.route_model import DEFAULT_MAX_JSON_BODY
from proxyd.gateway import json_ops, query_ops
from proxyd.gateway.json_ops import JsonOp, parse_json_ops
from proxyd.gateway.query_ops import QueryOp, parse_query_ops

TEMPLATE_VARIABLES = (
    "client_ip",
    "host",
    "scheme",
    "uri",
    "path",
    "query",
    "method",
    "request_id",
    "route",
    "tls_version",
    "tls_cipher",
    "tls_sni",
    "tls_client_subject",
    "tls_client_issuer",
    "tls_client_fingerprint",
    "tls_client_verify",
)
"""What a header rule value or a redirect location may use, as `{name}` (model.HeaderRule)."""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Not allowed in a field value (RFC 9110 5.5): controls other than HTAB."""


def template(text: str) -> str:
    """A string with `{variable}` parts; `{{` and `}}` are literal braces."""
    expected = "a template using only " + ", ".join(f"{{{name}}}" for name in TEMPLATE_VARIABLES)
    for field, written, plain in _fields(text, text, "a value"):
        if field not in TEMPLATE_VARIABLES:
            raise Invalid(expected, repr(written), did_you_mean(field, TEMPLATE_VARIABLES))
        if not plain:
            raise Invalid(expected, repr(written))
    return text


def _fields(text: str, shown: str, what: str) -> list[tuple[str, str, bool]]:
    """The `{...}` parts of template `text`: (name, as written, True when it has no format
    spec or conversion). Invalid for control characters or unbalanced braces, quoting
    `shown` (the text as the operator wrote it) and calling it `what`."""
    if _CONTROL.search(text):
        raise Invalid(f"{what} without control characters", repr(shown))
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise Invalid(
            "a template with balanced braces ('{{' and '}}' are literal braces)",
            f"{shown!r} ({e})",
        ) from None
    found = []
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        written = "{" + field + (f"!{conversion}" if conversion else "")
        written += (f":{spec}" if spec else "") + "}"
        found.append((field, written, not spec and not conversion))
    return found


FORBIDDEN_HEADERS: Mapping[str, str] = {
    "connection": "Connection",
    "transfer-encoding": "Transfer-Encoding",
    "content-length": "Content-Length",
    "host": "Host",
    "keep-alive": "Keep-Alive",
    "upgrade": "Upgrade",
    "te": "TE",
    "trailer": "Trailer",
}
"""Hop-by-hop and framing fields: proxyd writes these itself, a rule may not touch them."""

HEADER_OPS = ("remove", "rename", "replace", "set", "add_if_absent", "add", "append")
"""The header rule operations, in the order they apply within one list of rules: Kong's
request-transformer order (remove, rename, replace, add, append), with proxyd's `set`
(replace or add) after `replace`. Kong's `add` (only when absent) is `add_if_absent` here and
its `append` is proxyd's `add` (`append` is read as `add`)."""

_ORDER = {op: index for index, op in enumerate(HEADER_OPS)}
_ORDER["append"] = _ORDER["add"]

_USAGE = (
    "'remove NAME', 'rename NAME NEW_NAME', 'replace NAME VALUE', 'set NAME VALUE',"
    " 'add_if_absent NAME VALUE' or 'add NAME VALUE'"
)


def header_rule(text: str) -> HeaderRule:
    """One rule (HEADER_OPS); VALUE is a template."""
    args = v.words(text, "a header rule")
    if not args:
        raise Invalid(_USAGE, "nothing")
    op = args[0]
    if op not in HEADER_OPS:
        raise Invalid(
            f"{one_of(HEADER_OPS)} (a header rule)", repr(op), did_you_mean(op, HEADER_OPS)
        )
    if len(args) < 2:
        raise Invalid(f"a header name after '{op}'", "nothing")
    name = _rule_name(args[1])
    if op == "remove":
        if len(args) > 2:
            raise Invalid("'remove NAME' with no value", repr(text))
        return HeaderRule(op, name)
    if len(args) != 3:
        found = "nothing" if len(args) == 2 else repr(" ".join(args[2:]))
        what = "one new name" if op == "rename" else "one value"
        raise Invalid(f"{what} after '{op} {name}' (quote a value with spaces)", found)
    if op == "rename":
        return HeaderRule(op, name, _rule_name(args[2]))
    return HeaderRule("add" if op == "append" else op, name, template(args[2]))


def _rule_name(text: str) -> str:
    name = v.header_name(text)
    if name.lower() in FORBIDDEN_HEADERS:
        hint = (
            "the Host sent upstream is the pool action's 'host'"
            if name.lower() == "host"
            else "proxyd writes the hop-by-hop and framing fields itself"
        )
        raise Invalid(
            "a header other than " + ", ".join(FORBIDDEN_HEADERS.values()), repr(name), hint
        )
    return name


def header_rules(text: str) -> tuple[HeaderRule, ...]:
    """One header rule a line, put in the order they apply (HEADER_OPS; rules of one kind
    keep the order written)."""
    rules: list[HeaderRule] = []
    errors: list[Invalid] = []
    for index, line in v.each_line(text):
        try:
            rules.append(header_rule(line))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    return tuple(sorted(rules, key=lambda rule: _ORDER[rule.op]))


def query_params(text: str) -> tuple[QueryOp, ...]:
    """`query_params`: one query operation a line (proxyd.gateway.query_ops), in Kong's
    order."""
    ops = parse_query_ops(text.splitlines())
    if not ops:
        raise Invalid(f"one or more query operations, one a line: {query_ops.USAGE}", "nothing")
    return ops


def json_operations(text: str) -> tuple[JsonOp, ...]:
    """`request_json`, `response_json`: one JSON body operation a line
    (proxyd.gateway.json_ops), applied in the order written."""
    ops = parse_json_ops(text.splitlines())
    if not ops:
        raise Invalid(f"one or more JSON operations, one a line: {json_ops.USAGE}", "nothing")
    return ops


def upstream_method(text: str) -> str:
    """`upstream_method`: a method in upper case, not HEAD or CONNECT, whose answers are
    framed differently (RFC 9112 6.3): the client's answer must follow the client's method."""
    word = v.method(text)
    if word in ("HEAD", "CONNECT"):
        raise Invalid(
            "a method other than HEAD and CONNECT",
            repr(word),
            "HEAD requests keep their method; CONNECT opens a tunnel",
        )
    return word


def match_host(text: str) -> str:
    """A host to match: a name or `*.suffix`, lower-cased, without port or trailing dot."""
    word = text.lower()
    expected = "a host name such as api.example.com or *.example.com, without a port"
    name = word[2:] if word.startswith("*.") else word
    name = name.removesuffix(".")  # as request hosts are matched, without a trailing dot
    if word == "*":
        raise Invalid(expected, repr(text), "leave out 'host' to match any host")
    if not v.is_hostname(name):
        host, colon, port = name.rpartition(":")
        if colon and port.isdigit() and v.is_hostname(host):
            raise Invalid(expected, repr(text), "a route matches the host without its port")
        raise Invalid(expected, repr(text))
    return f"*.{name}" if word.startswith("*.") else name


_PATH_CHARS = re.compile(r"^/[\x21-\x7e]*$")
_ESCAPE = re.compile(r"%(?:([0-9A-F]{2})|(.{0,2}))")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def match_path(text: str) -> str:
    """A path prefix, written as proxyd normalises request paths (relay.http.routing), so
    that it can match: no dot segments, no `//`, `%XX` in upper case and only for characters
    that are not unreserved, no `;` (routes match paths without their parameters)."""
    expected = "a normalised path starting with '/'"
    if not _PATH_CHARS.match(text) or "?" in text or "#" in text:
        hint = None
        if text.startswith("/") and any(ord(c) > 0x7E for c in text):
            hint = "percent-encode other characters as UTF-8, as %C3%A9 for é"
        elif "?" in text or "#" in text:
            hint = "a route matches the path, without a query"
        raise Invalid(expected, repr(text), hint)
    for escape in _ESCAPE.finditer(text):
        hexa = escape.group(1)
        if hexa is None:
            raise Invalid(expected, repr(text), f"'{escape.group(0)}' is not %XX in upper case")
        char = chr(int(hexa, 16))
        if char in _UNRESERVED:
            raise Invalid(expected, repr(text), f"write '{char}' for '{escape.group(0)}'")
    if "//" in text:
        raise Invalid(expected, repr(text), "repeated slashes are merged in request paths")
    if any(segment in (".", "..") for segment in text.split("/")):
        raise Invalid(expected, repr(text), "dot segments are removed from request paths")
    if ";" in text:
        raise Invalid(
            expected, repr(text), "routes match request paths without their ';' parameters"
        )
    return text


def header_match(text: str) -> tuple[str, str | None]:
    """`NAME` (the field is present) or `NAME=VALUE` (its value is exactly VALUE)."""
    name, eq, value = text.partition("=")
    v.token("a header field name in 'header NAME[=VALUE]'")(name)
    if _CONTROL.search(value):
        raise Invalid("a header value without control characters", repr(value))
    return name.lower(), value if eq else None


def regex_rewrite(regex: str, replacement: str) -> tuple[re.Pattern[str], str]:
    """`REGEX REPLACEMENT`: a Python regex, and a replacement that is a template (the one
    language of header values and redirects): `{1}` or `{name}` for a group of REGEX, and the
    request's variables (`{host}`, `{method}`, `{route}`...). A group named like a variable
    wins. The regex module's `\\1` and `\\g<name>` are read too, as `{1}` and `{name}`."""
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise Invalid("a valid regular expression", f"{regex!r} ({e})") from None
    text = _braced(replacement)
    groups = [str(n) for n in range(1, pattern.groups + 1)] + list(pattern.groupindex)
    known = (*groups, *TEMPLATE_VARIABLES)
    for field, _written, plain in _fields(text, replacement, "a replacement"):
        if not plain or field not in known:
            expected = (
                f"groups {{1}} to {{{pattern.groups}}} of its regex or request variables"
                if pattern.groups
                else "request variables (the regex has no groups)"
            )
            raise Invalid(
                f"a replacement using {expected}",
                repr(replacement),
                did_you_mean(field, known) or f"{{{field}}} is not one of them",
            )
    return pattern, text


_GROUP_REFERENCE = re.compile(r"\\(?:g<(\w+)>|(\d+)|(\\)|(.))")


def _braced(replacement: str) -> str:
    """`\\1` and `\\g<name>` as `{1}` and `{name}`, `\\\\` as a backslash; any other escape is
    an error (a path has no use for them)."""

    def one(match: re.Match[str]) -> str:
        name, number, backslash, other = match.groups()
        if other is not None:
            raise Invalid(
                "a replacement whose groups are written {1} or {name}",
                repr(replacement),
                f"'\\{other}' is not a group reference",
            )
        if backslash is not None:
            return "\\"
        return "{" + (name or number) + "}"

    return _GROUP_REFERENCE.sub(one, replacement)


REDIRECT_STATUSES = ("301", "302", "303", "307", "308")


def redirect(args: list[str]) -> RedirectAction:
    """`CODE TEMPLATE`."""
    if len(args) != 2:
        raise Invalid("'redirect CODE LOCATION'", repr(" ".join(["redirect", *args])))
    code, location = args
    if code not in REDIRECT_STATUSES:
        raise Invalid(f"a redirect status ({one_of(REDIRECT_STATUSES)})", repr(code))
    if not location or any(c.isspace() for c in location):
        raise Invalid("a location without spaces", repr(location))
    return RedirectAction(int(code), template(location))


def respond(args: list[str]) -> RespondAction:
    """`CODE [BODY]`."""
    if not 1 <= len(args) <= 2:
        raise Invalid("'respond CODE [BODY]'", repr(" ".join(["respond", *args])))
    code = v.status(200, 599, "a response status")(args[0])
    if len(args) == 2 and args[1] and code in (204, 304):
        raise Invalid(f"no body with status {code}", repr(args[1]))
    return RespondAction(code, args[1] if len(args) == 2 else "")


_POOL_OPTIONS = ("strip_prefix", "rewrite", "host")


def proxy(args: list[str]) -> ProxyAction:
    """`NAME [strip_prefix] [rewrite REGEX REPLACEMENT] [host NAME]`."""
    if not args:
        raise Invalid("a pool name after 'pool'", "nothing")
    fields: dict[str, object] = {"pool": args.pop(0)}
    while args:
        word = args.pop(0)
        if word not in _POOL_OPTIONS:
            raise Invalid(
                f"a pool option ({one_of(_POOL_OPTIONS)})",
                repr(word),
                did_you_mean(word, _POOL_OPTIONS),
            )
        if word in fields:
            raise Invalid(f"'{word}' once", f"'{word}' twice")
        if word == "strip_prefix":
            fields[word] = True
        elif word == "rewrite":
            if len(args) < 2:
                raise Invalid("'rewrite REGEX REPLACEMENT'", repr(" ".join(["rewrite", *args])))
            fields[word] = regex_rewrite(args.pop(0), args.pop(0))
        else:
            if not args:
                raise Invalid("a host name after 'host'", "nothing")
            fields[word] = v.host_header(args.pop(0))
    return ProxyAction(**fields)  # type: ignore[arg-type]


@attrs.frozen
class RouteLine:
    """One parsed `routes` line: its matchers and either an action or a `[route]` name."""

    match: RouteMatch
    action: RouteAction | None
    ref: str | None = None
    """The NAME of `-> route NAME`; `action` is None then."""

    @property
    def name(self) -> str:
        return self.ref or (self.match.host or "*") + self.match.path

    def route(self, line: int, section: RouteSection | None = None) -> RouteConfig:
        if section is None:
            assert self.action is not None
            return RouteConfig(self.name, self.match, self.action, line=line)
        return RouteConfig(
            self.name,
            self.match,
            section.action(),
            section.request_headers,
            section.response_headers,
            section.filters,
            section.security,
            line=line,
            compress=section.compress,
        )


_MATCHERS: Mapping[str, Callable[[str], object]] = {
    "host": match_host,
    "path": match_path,
    "method": v.methods,
    "header": header_match,
}
_ACTIONS = ("pool", "redirect", "respond", "route")
_ROUTE_USAGE = "a route 'MATCHERS -> ACTION' such as 'path /api/ -> pool api'"


def route_line(text: str) -> RouteLine:
    """One line of `routes`: `MATCHERS -> ACTION`."""
    args = v.words(text, "a route")
    if "->" not in args:
        raise Invalid(
            _ROUTE_USAGE, repr(text), "'->' needs spaces around it" if "->" in text else None
        )
    arrow = args.index("->")
    matchers, action = args[:arrow], args[arrow + 1 :]
    fields: dict[str, object] = {}
    headers: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    while matchers:
        word = matchers.pop(0)
        if word not in _MATCHERS:
            raise Invalid(
                f"a matcher ({one_of(_MATCHERS)}) before '->'",
                repr(word),
                did_you_mean(word, _MATCHERS),
            )
        if not matchers:
            raise Invalid(f"a value after '{word}'", "nothing")
        if word in seen and word != "header":
            raise Invalid(f"'{word}' once", f"'{word}' twice")
        seen.add(word)
        value = _MATCHERS[word](matchers.pop(0))
        if word == "header":
            headers.append(value)  # type: ignore[arg-type]
        else:
            fields["methods" if word == "method" else word] = value
    if headers:
        fields["headers"] = tuple(headers)
    match = RouteMatch(**fields)  # type: ignore[arg-type]
    if not action:
        raise Invalid(f"an action ({one_of(_ACTIONS)}) after '->'", "nothing")
    kind, rest = action[0], action[1:]
    if kind == "pool":
        return RouteLine(match, proxy(rest))
    if kind == "redirect":
        return RouteLine(match, redirect(rest))
    if kind == "respond":
        return RouteLine(match, respond(rest))
    if kind == "route":
        if len(rest) != 1:
            raise Invalid("'route NAME'", repr(" ".join(action)))
        return RouteLine(match, None, rest[0])
    raise Invalid(
        f"an action ({one_of(_ACTIONS)}) after '->'", repr(kind), did_you_mean(kind, _ACTIONS)
    )


def rewrite(text: str) -> tuple[re.Pattern[str], str]:
    """`[route]` `rewrite = REGEX REPLACEMENT`."""
    args = v.words(text, "a rewrite")
    if len(args) != 2:
        raise Invalid('REGEX REPLACEMENT, such as "^/old/(.*)$" /new/{1}', repr(text))
    return regex_rewrite(*args)


def redirect_value(text: str) -> RedirectAction:
    return redirect(v.words(text, "a redirect"))


def respond_value(text: str) -> RespondAction:
    return respond(v.words(text, "a response"))


_MEDIA_TYPE = re.compile(rf"^{v.TCHAR}+/{v.TCHAR}+(\s*;.*)?$")


def content_type(text: str) -> str:
    word = text.strip()
    if not _MEDIA_TYPE.match(word) or _CONTROL.search(word):
        raise Invalid("a media type such as text/html; charset=utf-8", repr(word))
    return word


@attrs.frozen
class RouteSection:
    """`[route NAME]`: the action and header rules of the routes lines that say `route NAME`.
    Exactly one of `pool`, `redirect`, `respond`; loads() checks that before action()."""

    name: str
    pool: str | None = None
    strip_prefix: bool = False
    rewrite: tuple[re.Pattern[str], str] | None = None
    host: str | None = None
    redirect: RedirectAction | None = None
    respond: RespondAction | None = None
    content_type: str | None = None
    request_headers: tuple[HeaderRule, ...] = ()
    response_headers: tuple[HeaderRule, ...] = ()
    filters: tuple[FilterConfig, ...] = ()
    security: RouteSecurity = RouteSecurity()  # noqa: RUF009 (frozen: safe to share)
    query_params: tuple[QueryOp, ...] = ()
    upstream_method: str | None = None
    max_in_flight: int = 0
    max_queued: int = 0
    queue_timeout: float = 5.0
    request_json: tuple[JsonOp, ...] = ()
    response_json: tuple[JsonOp, ...] = ()
    max_json_body: int = DEFAULT_MAX_JSON_BODY
    compress: RouteCompress | None = None

    def action(self) -> RouteAction:
        if self.pool is not None:
            return ProxyAction(
                self.pool,
                self.strip_prefix,
                self.rewrite,
                self.host,
                self.query_params,
                self.upstream_method,
                self.max_in_flight,
                self.max_queued,
                self.queue_timeout,
                self.request_json,
                self.response_json,
                self.max_json_body,
            )
        if self.redirect is not None:
            return self.redirect
        assert self.respond is not None
        if self.content_type is None:
            return self.respond
        return attrs.evolve(self.respond, content_type=self.content_type)


ROUTE_ACTION_KEYS = ("pool", "redirect", "respond")
ROUTE_OPTION_KEYS: Mapping[str, str] = {
    "strip_prefix": "pool",
    "rewrite": "pool",
    "host": "pool",
    "query_params": "pool",
    "upstream_method": "pool",
    "max_in_flight": "pool",
    "max_queued": "pool",
    "queue_timeout": "pool",
    "request_json": "pool",
    "response_json": "pool",
    "max_json_body": "pool",
    **{key: "pool" for key in COMPRESS_KEYS},
    "content_type": "respond",
}
"""Keys of `[route]` that only go with one action key."""
