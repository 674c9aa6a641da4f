"""Header policy for the HTTP relay, sans-IO: which fields go on to the next hop, which are
added (X-Forwarded-*, Forwarded, Via, X-Request-ID) and the configured header rules.

Headers are `[(name, value), ...]` in wire order, names in the case they arrived in; names
compare case-insensitively. Every function here runs once or twice per request, so each is
a single pass over the fields with one `lower()` per name and no regular expressions.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import re
import string
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from proxyd.config.model import HeaderRule
from proxyd.config.routes import TEMPLATE_VARIABLES
from proxyd.tls import PeerTls

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Fields that describe one connection, never forwarded (RFC 9110 7.6.1; Keep-Alive and
Proxy-Connection are the pre-1.1 ones)."""

_NEVER_CONNECTION_OPTIONS: Final = frozenset({b"content-length", b"host"})
"""Kept even when Connection names them: without them the next hop could not frame the
message (Content-Length) or would have to refuse it (Host, RFC 9112 3.2)."""


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Lower-case tokens of all Connection fields (e.g. {b'close'}, {b'keep-alive'},
    {b'upgrade'})."""
    return frozenset(
        _tokens(
            [value for name, value in headers if len(name) == 10 and name.lower() == b"connection"]
        )
    )


def _tokens(values: list[bytes]) -> set[bytes]:
    """The lower-case tokens of comma-separated list values."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token:
                tokens.add(token)
    return tokens


def remove_hop_by_hop(headers: Headers, also: frozenset[bytes] = frozenset()) -> Headers:
    """Without HOP_BY_HOP fields and without every field named in Connection (RFC 9110
    7.6.1); Content-Length and Host are kept. Fields named in `also` (lower case) go too."""
    drop = _dropped(also)
    kept: Headers = []
    named: list[bytes] = []
    for field in headers:
        lower = field[0].lower()
        if lower not in drop:
            kept.append(field)
        elif lower == b"connection" and field[1].lower() not in drop:
            # A value that is one dropped name (keep-alive, upgrade: no comma in any) names
            # nothing more; others are read below.
            named.append(field[1])
    if named:
        # Connection's options that name fields not dropped yet: a second pass, rarely
        # needed.
        options = _tokens(named) - drop - _NEVER_CONNECTION_OPTIONS
        if options:
            kept = [field for field in kept if field[0].lower() not in options]
    return kept


@functools.lru_cache(maxsize=16)
def _dropped(also: frozenset[bytes]) -> frozenset[bytes]:
    return HOP_BY_HOP | also


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """All fields of lower-case `name` joined with b', ' (None when absent)."""
    values = [value for key, value in headers if key.lower() == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


NO_TLS: Final = PeerTls()
"""Plain HTTP's TLS facts: every field ""."""


@attrs.define
class RequestContext:
    """What a request's templates and added fields are made of. Made once per request and
    never changed, but not frozen: attrs' frozen __init__ sets each of its 19 fields through
    object.__setattr__, which cost more than a microsecond a request."""

    client_ip: str
    client_port: int
    scheme: str
    """"http" | "https"."""
    host: str
    """Host as received (may include a port); "" if none."""
    method: str
    path: str
    query: str
    """Without the '?'; "" if none."""
    uri: str
    """path + ('?' + query if query)."""
    request_id: str
    route: str
    local_ip: str = ""
    local_port: int = 0
    tls: PeerTls = NO_TLS
    """The connection's TLS facts, read by the `tls_*` properties ("" on plain HTTP): one
    field rather than seven set on every request."""

    @property
    def tls_version(self) -> str:
        return self.tls.version

    @property
    def tls_cipher(self) -> str:
        return self.tls.cipher

    @property
    def tls_sni(self) -> str:
        return self.tls.server_name

    @property
    def tls_client_subject(self) -> str:
        return self.tls.client_subject

    @property
    def tls_client_issuer(self) -> str:
        return self.tls.client_issuer

    @property
    def tls_client_fingerprint(self) -> str:
        return self.tls.client_fingerprint

    @property
    def tls_client_verify(self) -> str:
        return self.tls.client_verify


def _encode(text: str) -> bytes:
    """A field value's bytes: latin-1 (what the received values were decoded from), else
    UTF-8 for text that latin-1 cannot hold (RFC 9110 5.5 obs-text)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


# Templates.

TEMPLATE_FIELDS: Final = frozenset(TEMPLATE_VARIABLES)
"""The `{name}`s a template may use: RequestContext attributes."""

_Compiled = tuple[tuple[str, str | None], ...]
"""(literal text, then the RequestContext attribute to insert or None), in order."""

_templates: dict[str, _Compiled] = {}
_MAX_TEMPLATES: Final = 4096
"""Templates come from the configuration; this only bounds the cache across many reloads."""


def _compile(template: str) -> _Compiled:
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is not None and (field not in TEMPLATE_FIELDS or spec or conversion):
            raise ValueError(f"template {template!r}: unknown field {{{field}}}")
        parts.append((literal, field))
    if len(_templates) >= _MAX_TEMPLATES:
        _templates.clear()
    compiled = _templates[template] = tuple(parts)
    return compiled


def expand(template: str, ctx: RequestContext) -> str:
    """Substitute {client_ip} {host} {scheme} {uri} {path} {query} {method} {request_id}
    {route}; '{{' and '}}' are literal braces. Templates were validated at config load
    (ValueError for one that would not have been); each is parsed once and cached."""
    parts = _templates.get(template)
    if parts is None:
        parts = _compile(template)
    if len(parts) == 1 and parts[0][1] is None:
        return parts[0][0]
    return "".join(
        [literal + getattr(ctx, field) if field else literal for literal, field in parts]
    )


# Request ids.

_VISIBLE: Final = bytes(range(0x21, 0x7F))
_MAX_REQUEST_ID: Final = 200


_ID_PREFIX: Final = os.urandom(8).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> str:
    """32 hex digits: a random per-process prefix and a counter (unique, and cheaper than
    a uuid4 per request)."""
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def request_id(headers: Headers, generate: Callable[[], str]) -> str:
    """The incoming X-Request-ID if it is 1..200 visible ASCII characters (0x21-0x7e), else
    generate(). Several X-Request-ID fields join with ', ', which is not valid."""
    value = header_value(headers, b"x-request-id")
    if value and len(value) <= _MAX_REQUEST_ID and not value.translate(None, _VISIBLE):
        return value.decode("ascii")
    return generate()


# Fields added on the way through.

_XFF: Final = b"x-forwarded-for"
_XFP: Final = b"x-forwarded-proto"
_XFH: Final = b"x-forwarded-host"
_FORWARDED: Final = b"forwarded"
_VIA: Final = b"via"
_REQUEST_ID: Final = b"x-request-id"
PROXY_SET: Final = frozenset(
    {
        # The client's address, as other proxies and CDNs name it.
        b"x-real-ip",
        b"client-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-original-forwarded-for",
        # The scheme, host, port and prefix the client used (Werkzeug's ProxyFix, Spring's
        # ForwardedHeaderFilter, Rails, ...).
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"front-end-https",
        b"x-url-scheme",
        # The URL itself, read instead of the request line's (IIS URL Rewrite, Symfony).
        b"x-original-url",
        b"x-rewrite-url",
    }
)
"""Fields a proxy sets, that backends believe as X-Forwarded-For: kept from a client in
trusted_proxies, removed from any other (X-Forwarded-For, -Proto, -Host and Forwarded are
replaced by proxyd's own)."""

_FORWARDING: Final = frozenset({_XFF, _XFP, _XFH, _FORWARDED, _VIA, _REQUEST_ID}) | PROXY_SET

_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
"""RFC 9110 5.6.2 token (fullmatch)."""


def _forwarded_value(text: str) -> str:
    """A Forwarded parameter value: a token as it is, else a quoted-string (RFC 7239 4)."""
    if _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_node(ip: str) -> str:
    """RFC 7239 6: an IPv6 node is bracketed (and so quoted); an unknown client is `unknown`."""
    if not ip:
        return "unknown"
    if ":" in ip:
        return f'"[{ip}]"'
    return _forwarded_value(ip)


def forwarded_element(ctx: RequestContext) -> bytes:
    """This hop's Forwarded element: `for=NODE;host=HOST;proto=SCHEME` (no `by=`)."""
    return _forwarded_element(ctx.client_ip, ctx.host, ctx.scheme)


@functools.lru_cache(maxsize=1024)
def _forwarded_element(client_ip: str, host: str, scheme: str) -> bytes:
    """Cached: a client sends its requests with the same few Host values."""
    element = "for=" + _forwarded_node(client_ip)
    if host:
        element += ";host=" + _forwarded_value(host)
    return _encode(element + ";proto=" + scheme)


_VIAS: Final = {"1.1": b"1.1 proxyd", "1.0": b"1.0 proxyd"}


def _via(version: str) -> bytes:
    # RFC 9110 7.6.3: received-protocol is the version alone when the protocol is HTTP.
    via = _VIAS.get(version)
    return via if via is not None else version.encode("ascii") + b" proxyd"


def _append_via(out: Headers, index: int, version: str) -> None:
    """Add this hop to the Via field at `index` as a new list element, or a new field."""
    if index < 0:
        out.append((b"Via", _via(version)))
    else:
        name, value = out[index]
        out[index] = (name, value + b", " + _via(version) if value.strip() else _via(version))


def _join(values: list[bytes], last: bytes) -> bytes:
    """Field values of one list-valued field, in order, then `last`; empty ones skipped."""
    kept = [value for value in values if value.strip(b" \t")]
    kept.append(last)
    return b", ".join(kept)


def is_trusted(
    host: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """The client address `host` is in one of `networks` (a listener's trusted_proxies); an
    IPv4-mapped IPv6 address counts as its IPv4 address."""
    if not networks or not host:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def forward_request_headers(
    headers: Headers, ctx: RequestContext, *, trusted: bool, via: bool, version: str
) -> Headers:
    """Headers to send upstream, from the client's headers with hop-by-hop fields removed.

    - X-Forwarded-For: trusted -> ', client_ip' appended to the incoming value(s) (several
      fields combined in order); untrusted -> client_ip alone.
    - X-Forwarded-Proto / X-Forwarded-Host: kept when trusted and present, else set to
      ctx.scheme / ctx.host (X-Forwarded-Host left out when ctx.host is "").
    - Forwarded (RFC 7239): trusted -> incoming elements kept and this hop's appended;
      untrusted -> incoming dropped. See forwarded_element().
    - PROXY_SET (X-Real-IP, True-Client-IP, X-Forwarded-Port, X-Original-URL, ...): kept
      when trusted, dropped when not.
    - Via: '<version> proxyd' added as a new element of an existing Via, when `via`.
    - X-Request-ID: ctx.request_id, replacing any incoming fields.

    The fields proxyd writes itself go at the end, in the order above; the rest keep theirs.
    """
    out: Headers = []
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    has_proto = has_host = False
    via_index = -1
    for field in headers:
        lower = field[0].lower()
        if lower not in _FORWARDING:
            out.append(field)
        elif lower == _VIA:
            via_index = len(out)
            out.append(field)
        elif not trusted or lower == _REQUEST_ID:
            continue
        elif lower == _XFF:
            xff.append(field[1])
        elif lower == _FORWARDED:
            forwarded.append(field[1])
        else:
            if lower == _XFP:
                has_proto = True
            elif lower == _XFH:
                has_host = True
            out.append(field)
    client_ip = ctx.client_ip.encode("ascii")
    out.append((b"X-Forwarded-For", _join(xff, client_ip) if xff else client_ip))
    if not has_proto:
        out.append((b"X-Forwarded-Proto", ctx.scheme.encode("ascii")))
    if not has_host and ctx.host:
        out.append((b"X-Forwarded-Host", _encode(ctx.host)))
    element = forwarded_element(ctx)
    out.append((b"Forwarded", _join(forwarded, element) if forwarded else element))
    if via:
        _append_via(out, via_index, version)
    out.append((b"X-Request-ID", ctx.request_id.encode("ascii")))
    return out


def response_headers(
    headers: Headers,
    *,
    via: bool,
    version: str,
    hidden: frozenset[bytes] = frozenset(),
    server: tuple[bytes, bytes] | None = None,
) -> Headers:
    """Headers to send to the client from the upstream's, hop-by-hop fields removed: the
    fields named in `hidden` (lower case: hide_headers) removed, `server` added when no Server
    is left, and this hop added to Via (as for requests) when `via`."""
    if hidden:
        out = [field for field in headers if field[0].lower() not in hidden]
    else:
        out = list(headers)
    if server is not None and (
        b"server" in hidden or not any(len(f[0]) == 6 and f[0].lower() == b"server" for f in out)
    ):
        out.append(server)
    if not via:
        return out
    index = -1
    for i, (name, _) in enumerate(out):
        if len(name) == 3 and name.lower() == _VIA:
            index = i
    _append_via(out, index, version)
    return out


def replace_field(
    headers: Headers, field: tuple[bytes, bytes], lower: bytes, *, remove_only: bool = False
) -> Headers:
    """`headers` with every field named `lower` (lower case) replaced by one `field`, in the
    first one's place, else at the end; with `remove_only`, only removed."""
    kept: Headers = []
    placed = remove_only
    for existing in headers:
        if existing[0].lower() != lower:
            kept.append(existing)
        elif not placed:
            kept.append(field)
            placed = True
    if not placed:
        kept.append(field)
    return kept


# Header rules.

_CompiledRule = tuple[str, bytes, bytes]
"""(op, name as written, lower-case name)."""
_rules: dict[HeaderRule, _CompiledRule] = {}


def _compile_rule(rule: HeaderRule) -> _CompiledRule:
    if len(_rules) >= _MAX_TEMPLATES:
        _rules.clear()
    name = rule.name.encode("ascii")
    compiled = _rules[rule] = (rule.op, name, name.lower())
    return compiled


def apply_rules(headers: Headers, rules: Sequence[HeaderRule], ctx: RequestContext) -> Headers:
    """Apply header rules in the order given (the config puts a list in HEADER_OPS' order),
    returning a new list:

    - `remove` deletes every field of that name (case-insensitive);
    - `rename` gives every field of that name the new name (`rule.value`), at its place;
    - `replace` does what `set` does, but only when a field of that name is there;
    - `set` replaces every field of that name with one field at the position of the first,
      or appends it; a value that expands to "" removes them all;
    - `add_if_absent` appends a field when none of that name is there;
    - `add` appends a field, unless its value expands to "".

    Values are expand()ed templates, encoded latin-1 (UTF-8 when they hold characters beyond
    latin-1); names are sent as the rule writes them.
    """
    out = list(headers)
    for rule in rules:
        compiled = _rules.get(rule)
        if compiled is None:
            compiled = _compile_rule(rule)
        op, name, lower = compiled
        if op == "add":
            value = expand(rule.value, ctx)
            if value:
                out.append((name, _encode(value)))
        elif op == "remove":
            out = [field for field in out if field[0].lower() != lower]
        elif op == "set":
            value = expand(rule.value, ctx)
            out = replace_field(out, (name, _encode(value)), lower, remove_only=not value)
        elif op == "rename":
            new_name = rule.value.encode("ascii")
            out = [
                (new_name, value) if field.lower() == lower else (field, value)
                for field, value in out
            ]
        elif op == "replace":
            if any(field[0].lower() == lower for field in out):
                value = expand(rule.value, ctx)
                out = replace_field(out, (name, _encode(value)), lower, remove_only=not value)
        elif op == "add_if_absent":
            if not any(field[0].lower() == lower for field in out):
                value = expand(rule.value, ctx)
                if value:
                    out.append((name, _encode(value)))
        else:
            raise ValueError(f"unknown header rule operation {op!r}")
    return out
