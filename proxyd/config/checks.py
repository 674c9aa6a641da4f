"""The parser of a pool's `check` (the active health check): its kind and its arguments.
Raises Invalid(expected, found, hint)."""

from __future__ import annotations

import re

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype

from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.http_values import host_header, method, request_path, status_ranges
from proxyd.config.model import (
    CheckConfig,
    DnsCheck,
    GrpcCheck,
    HttpCheck,
    MysqlCheck,
    SipCheck,
    SmtpCheck,
    TcpCheck,
    TlsCheck,
    TlsClientConfig,
    WebSocketCheck,
)
from proxyd.config.scalars import (
    words,
)

CHECK_KINDS = ("tcp", "smtp", "mysql", "http", "tls", "dns", "sip", "websocket", "grpc")


def check(text: str) -> CheckConfig | None:
    """`tcp [send STR] [expect STR | expect_regex STR]`, `smtp [DOMAIN]`, `mysql`,
    `http [METHOD] [PATH] [host NAME] [expect CODES] [body STR]`, `tls [http ...]`, `none`.
    A tls check's TLS settings are the pool's, filled in by the loader."""
    args = words(text, "a check")
    if not args:
        raise Invalid(f"a check kind ({one_of(CHECK_KINDS)})", "nothing")
    kind = args.pop(0)
    if kind == "none" and not args:
        return None
    if kind == "tcp":
        return _tcp_check(args)
    if kind == "smtp":
        if len(args) > 1:
            raise Invalid("'smtp' or 'smtp DOMAIN'", repr(text))
        return SmtpCheck(args[0]) if args else SmtpCheck()
    if kind == "mysql":
        if args:
            raise Invalid("'mysql' with no arguments", repr(text))
        return MysqlCheck()
    if kind == "http":
        return _http_check(args)
    if kind == "dns":
        return _dns_check(args)
    if kind == "sip":
        if len(args) > 1 or (args and not re.match(r"^sips?:[\x21-\x7e]+$", args[0])):
            raise Invalid("'sip' or 'sip URI' such as 'sip sip:ping@10.0.0.5'", repr(text))
        return SipCheck(args[0]) if args else SipCheck()
    if kind == "tls":
        if not args:
            return TlsCheck(TlsClientConfig())
        if args[0] != "http":
            raise Invalid("'tls' alone or 'tls http ...'", repr(text))
        return TlsCheck(TlsClientConfig(), _http_check(args[1:]))
    if kind == "websocket":
        return _websocket_check(args)
    if kind == "grpc":
        if len(args) > 1 or (args and not re.match(r"^[A-Za-z0-9_.]+$", args[0])):
            raise Invalid("'grpc' or 'grpc SERVICE' such as 'grpc helloworld.Greeter'", repr(text))
        return GrpcCheck(args[0]) if args else GrpcCheck()
    kinds = (*CHECK_KINDS, "none")
    raise Invalid(f"a check kind ({one_of(kinds)})", repr(kind), did_you_mean(kind, kinds))


def _dns_check(args: list[str]) -> DnsCheck:
    expected = "'dns NAME [TYPE] [expect RCODE[,RCODE...]]', such as 'dns example.com A'"
    if not args or args[0] == "expect":
        raise Invalid(expected, "no name")
    name = args.pop(0)
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as e:
        raise Invalid(expected, f"{name!r} ({e})") from None
    fields: dict[str, object] = {"name": name}
    if args and args[0] != "expect":
        rdtype = args.pop(0).upper()
        try:
            dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            raise Invalid("a DNS record type such as A, AAAA, MX, SOA", repr(rdtype)) from None
        fields["rdtype"] = rdtype
    if args:
        if args[0] != "expect" or len(args) != 2:
            raise Invalid(expected, repr(" ".join(args)))
        codes = tuple(code.upper() for code in args[1].split(","))
        for code in codes:
            try:
                dns.rcode.from_text(code)
            except dns.exception.DNSException:
                raise Invalid("DNS rcodes such as NOERROR, NXDOMAIN", repr(code)) from None
        fields["expect"] = codes
    return DnsCheck(**fields)  # type: ignore[arg-type]


def _unescape(text: str) -> bytes:
    try:
        return text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeError, ValueError):
        raise Invalid("a string with valid escapes (\\r \\n \\x00)", repr(text)) from None


def _tcp_check(args: list[str]) -> TcpCheck:
    words = ("send", "expect", "expect_regex")
    values: dict[str, str] = {}
    while args:
        word = args.pop(0)
        if word not in words:
            raise Invalid(f"{one_of(words)} after 'tcp'", repr(word), did_you_mean(word, words))
        if not args:
            raise Invalid(f"a quoted string after '{word}'", "nothing")
        if word in values:
            raise Invalid(f"'{word}' once", f"'{word}' twice")
        values[word] = args.pop(0)
    if "expect" in values and "expect_regex" in values:
        raise Invalid("either 'expect' or 'expect_regex'", "both")
    regex = None
    if "expect_regex" in values:
        try:
            regex = re.compile(values["expect_regex"].encode())  # re reads its own escapes
        except re.error as e:
            raise Invalid(
                "a valid regular expression", f"{values['expect_regex']!r} ({e})"
            ) from None
    return TcpCheck(
        send=_unescape(values["send"]) if "send" in values else None,
        expect=_unescape(values["expect"]) if "expect" in values else None,
        expect_regex=regex,
    )


_HTTP_CHECK_WORDS = ("host", "expect", "body")


def _http_check(args: list[str]) -> HttpCheck:
    fields: dict[str, object] = {}
    if args and args[0] not in _HTTP_CHECK_WORDS and not args[0].startswith("/"):
        fields["method"] = method(args.pop(0))
    if args and args[0].startswith("/"):
        fields["path"] = request_path(args.pop(0))
    seen: set[str] = set()
    while args:
        word = args.pop(0)
        if word not in _HTTP_CHECK_WORDS:
            hint = "the method and the path come first" if word.startswith("/") else None
            raise Invalid(
                f"{one_of(_HTTP_CHECK_WORDS)} after 'http [METHOD] [PATH]'",
                repr(word),
                hint or did_you_mean(word, _HTTP_CHECK_WORDS),
            )
        if not args:
            raise Invalid(f"a value after '{word}'", "nothing")
        if word in seen:
            raise Invalid(f"'{word}' once", f"'{word}' twice")
        seen.add(word)
        value = args.pop(0)
        if word == "host":
            fields["host"] = host_header(value)
        elif word == "expect":
            fields["expect"] = status_ranges(value)
        else:
            fields["body"] = _unescape(value)
    return HttpCheck(**fields)  # type: ignore[arg-type]


def _websocket_check(args: list[str]) -> WebSocketCheck:
    fields: dict[str, object] = {}
    if args and args[0].startswith("/"):
        fields["path"] = request_path(args.pop(0))
    words = ("host", "ping")
    while args:
        word = args.pop(0)
        if word not in words or word in fields:
            raise Invalid(
                "'websocket [PATH] [host NAME] [ping]', such as 'websocket /ws ping'",
                repr(word),
                did_you_mean(word, words),
            )
        if word == "ping":
            fields["ping"] = True
            continue
        if not args:
            raise Invalid("a value after 'host'", "nothing")
        fields["host"] = host_header(args.pop(0))
    return WebSocketCheck(**fields)  # type: ignore[arg-type]
