"""Parsers for single configuration values. Each raises Invalid(expected, found, hint)."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Iterator, Sequence

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet.endpoints import serverFromString

from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.model import (
    Address,
    CheckConfig,
    DnsCheck,
    HttpCheck,
    MysqlCheck,
    ServerConfig,
    SipCheck,
    SmtpCheck,
    TcpCheck,
    TlsCheck,
    TlsClientConfig,
    WebSocketCheck,
)


class Invalids(Exception):
    """Several Invalid at once: every bad line of a multi-line value, each with its value_line."""

    def __init__(self, errors: Sequence[Invalid]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = tuple(errors)


def each_line(text: str) -> Iterator[tuple[int, str]]:
    """The lines of a multi-line value with their index (Invalid.value_line)."""
    return enumerate(text.splitlines())


def collect(errors: list[Invalid], index: int, error: Invalid) -> None:
    """Keep `error`, found on line `index` of a value, to raise with the others at the end."""
    errors.append(Invalid(error.expected, error.found, error.hint, value_line=index))


def raise_all(errors: Sequence[Invalid]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise Invalids(errors)


def words(text: str, what: str) -> list[str]:
    """Split on white space; single or double quotes group words. Backslashes are kept as
    written (each value reads its own escapes)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    lexer.escapedquotes = ""
    try:
        return list(lexer)
    except ValueError as e:
        raise Invalid(f"{what} with balanced quotes", f"{text!r} ({e})") from None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(text: str) -> float:
    """`500ms`, `2s`, `1m`, `1h`, `1d`, or bare seconds; returns seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise Invalid("a duration such as 500ms, 2s, 1m, 1h, 1d", repr(text))
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def positive_duration(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise Invalid("a duration above zero", repr(text))
    return value


_SIZE = re.compile(r"^(\d+)\s*(b|k|kib|m|mib|g|gib|t|tib)?$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}


def size(low: int, high: int) -> Callable[[str], int]:
    """`64KiB`, `1MiB`, `512` (bytes); k/m/g/t are taken as KiB/MiB/GiB/TiB, as nginx does."""

    def parse(text: str) -> int:
        expected = f"a size from {_show_size(low)} to {_show_size(high)} such as 64KiB or 1MiB"
        match = _SIZE.match(text.strip())
        if not match:
            raise Invalid(expected, repr(text))
        unit = match.group(2).lower() if match.group(2) else None
        value = int(match.group(1)) * _SIZE_UNITS[unit]
        if not low <= value <= high:
            raise Invalid(expected, repr(text))
        return value

    return parse


def _show_size(n: int) -> str:
    if n == 0:
        return "0"
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        expected = f"a whole number from {low}" + (f" to {high}" if high is not None else "")
        try:
            value = int(text.strip())
        except ValueError:
            raise Invalid(expected, repr(text)) from None
        if value < low or (high is not None and value > high):
            raise Invalid(expected, repr(text))
        return value

    return parse


_BOOLS = {
    "on": True,
    "yes": True,
    "true": True,
    "1": True,
    "off": False,
    "no": False,
    "false": False,
    "0": False,
}


def boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in _BOOLS:
        raise Invalid("on or off", repr(text))
    return _BOOLS[word]


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip()
        if word not in choices:
            raise Invalid(one_of(choices), repr(word), did_you_mean(word, choices))
        return word

    return parse


def address(text: str) -> Address:
    """`HOST:PORT` or `[IPV6]:PORT`."""
    text = text.strip()
    expected = "an address HOST:PORT or [IPv6]:PORT"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise Invalid(expected, repr(text))
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(expected, repr(text), "not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise Invalid(expected, repr(text))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(expected + " with a port from 1 to 65535", repr(text))
    return Address(host, int(port))


def endpoint(text: str) -> str:
    """A Twisted server endpoint string; checked by building (not listening on) the endpoint."""
    text = text.strip()
    try:
        serverFromString(None, text)
    except Exception as e:  # endpoint parsers raise ValueError, TypeError, KeyError...
        raise Invalid(
            "a Twisted endpoint such as tcp:8080:interface=127.0.0.1",
            f"{text!r} ({e})",
        ) from None
    return text


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """A Twisted endpoint string's kind, positional and keyword arguments, split on the `:`
    and the first `=` of each argument that are not escaped with a backslash, as Twisted
    reads them."""
    parts: list[tuple[str, str | None]] = []  # (name or the positional value, value)
    current: list[str] = []
    name: str | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append(("".join(current), None) if name is None else (name, "".join(current)))
            current, name = [], None
        elif char == "=" and name is None:
            name, current = "".join(current), []
        else:
            current.append(char)
    parts.append(("".join(current), None) if name is None else (name, "".join(current)))
    (kind, _), args = parts[0], parts[1:]
    positional = [arg for arg, value in args if value is None]
    keywords = {arg: value for arg, value in args if value is not None}
    return kind, positional, keywords


def udp_endpoint(text: str) -> str:
    """`udp:PORT[:interface=ADDRESS]`, the udp: endpoint Twisted does not have: PORT 1-65535,
    ADDRESS an IPv4 or IPv6 address (IPv6 with its colons escaped as `\\:`, as Twisted's
    endpoint strings write them, or bare)."""
    text = text.strip()
    expected = "udp:PORT or udp:PORT:interface=ADDRESS, such as udp:5353:interface=127.0.0.1"
    kind, _, rest = text.partition(":")
    port, _, option = rest.partition(":")
    if kind != "udp" or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(expected, repr(text))
    if option:
        name, _, value = option.partition("=")
        address = value.replace("\\:", ":")
        if name != "interface":
            raise Invalid(expected, repr(text), did_you_mean(name, ["interface"]))
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise Invalid(expected, repr(text), "the interface must be an IP address") from None
        return f"udp:{int(port)}:interface={address}"
    return f"udp:{int(port)}"


MAX_WORKERS = 256


def workers(text: str) -> int:
    """`auto` (one per CPU this process may run on) or a number of worker processes."""
    if text.strip() == "auto":
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    try:
        return integer(1, MAX_WORKERS)(text)
    except Invalid:
        raise Invalid(f"'auto' or a whole number from 1 to {MAX_WORKERS}", repr(text)) from None


def log_target(text: str) -> str:
    text = text.strip()
    if not text:
        raise Invalid("'-' (stdout), 'off' or a file path", "nothing")
    return text


_SERVER_FLAGS = ("backup", "down")
_SERVER_OPTIONS = {"weight": integer(1, 256), "max_connections": integer(0)}


def servers(text: str) -> tuple[ServerConfig, ...]:
    """Server specs, one or more a line: `ADDR [weight=N] [max_connections=N] [backup] [down]`."""
    result: list[dict[str, object]] = []
    seen: set[Address] = set()
    for index, line in enumerate(text.splitlines()):
        try:
            for spec in _server_line(line):
                if spec["address"] in seen:
                    raise Invalid("each server once", f"{spec['address']} twice")
                seen.add(spec["address"])  # type: ignore[arg-type]
                result.append(spec)
        except Invalid as e:
            raise Invalid(e.expected, e.found, e.hint, value_line=index) from None
    if not result:
        raise Invalid("at least one server", "none")
    return tuple(ServerConfig(**spec) for spec in result)  # type: ignore[arg-type]


def _server_line(line: str) -> list[dict[str, object]]:
    options = [*_SERVER_OPTIONS, *_SERVER_FLAGS]
    specs: list[dict[str, object]] = []
    for token in line.split():
        name, eq, value = token.partition("=")
        if (eq or token in _SERVER_FLAGS) and not specs:
            raise Invalid("an address before server options", repr(token))
        if eq:
            if name not in _SERVER_OPTIONS:
                raise Invalid(
                    f"a server option ({one_of(options)})",
                    repr(token),
                    did_you_mean(name, options),
                )
            specs[-1][name] = _SERVER_OPTIONS[name](value)
        elif token in _SERVER_FLAGS:
            specs[-1][token] = True
        elif ":" in token:
            specs.append({"address": address(token)})
        else:
            raise Invalid(
                "an address HOST:PORT or a server option",
                repr(token),
                did_you_mean(token, options),
            )
    return specs


CHECK_KINDS = ("tcp", "smtp", "mysql", "http", "tls", "dns", "sip", "websocket")


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


_ORIGIN = re.compile(r"^(?:null|[a-z][a-z0-9+.-]*://[^/\s?#]+)$")


def origins(text: str) -> tuple[str, ...]:
    """Origin values (RFC 6454 serialisation: `scheme://host[:port]`, or `null`), one or more
    a line; `*` in one matches any characters, as in `https://*.example.com`."""
    result: list[str] = []
    for item in text.split():
        origin = item.lower().rstrip("/")
        if not _ORIGIN.match(origin):
            raise Invalid(
                "origins such as https://chat.example.com or https://*.example.com", repr(item)
            )
        result.append(origin)
    if not result:
        raise Invalid("at least one origin", "nothing")
    return tuple(result)


TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(rf"^{TCHAR}+$")
"""RFC 9110 5.6.2: header field names, method names and cookie names are tokens."""


def token(what: str) -> Callable[[str], str]:
    """A token (RFC 9110 5.6.2) such as a header field or cookie name, as written."""

    def parse(text: str) -> str:
        word = text.strip()
        if not _TOKEN.match(word):
            raise Invalid(
                f"{what} (letters, digits and !#$%&'*+-.^_`|~)", repr(word) if word else "nothing"
            )
        return word

    return parse


_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_BEARER = 16


def bearer_token(text: str) -> str:
    """A bearer token (RFC 6750 2.1, b64token) of at least MIN_BEARER characters."""
    word = text.strip()
    if not _BEARER.fullmatch(word) or len(word) < MIN_BEARER:
        raise Invalid(
            f"a token of at least {MIN_BEARER} characters (letters, digits and -._~+/,"
            " then any '=')",
            f"{len(word)} characters" if _BEARER.fullmatch(word) else "other characters",
        )
    return word


def is_local_endpoint(description: str) -> bool:
    """Whether a server endpoint listens only for this machine: a unix: socket, or tcp: or
    tcp6: on a loopback interface (no interface is every interface)."""
    kind, positional, keywords = split_endpoint(description)
    if kind.lower() == "unix":
        return True
    interface = keywords.get("interface", positional[1] if len(positional) > 1 else "")
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


header_name = token("a header field name")
cookie_name = token("a cookie name")


_COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")


def method(text: str) -> str:
    """An HTTP method: a token, in upper case (methods are case-sensitive, RFC 9110 9.1)."""
    word = text.strip()
    if not _TOKEN.match(word) or word != word.upper():
        hint = f"did you mean '{word.upper()}'?" if _TOKEN.match(word) else None
        raise Invalid("a method name in upper case such as GET", repr(word), hint)
    return word


def methods(text: str) -> frozenset[str]:
    """`GET` or `GET,HEAD,...`."""
    return frozenset(method(part) for part in text.split(","))


_PATH = re.compile(r"^/[\x21-\x7e]*$")


def request_path(text: str) -> str:
    """An origin-form request target for the upstream: `/` then visible ASCII (a query too)."""
    if not _PATH.match(text):
        raise Invalid("a path starting with '/' (visible ASCII, no spaces)", repr(text))
    return text


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def is_hostname(text: str) -> bool:
    """A DNS name or IPv4 address (letters, digits, '-', '_', dots), or a bracketed IPv6."""
    if text.startswith("[") and text.endswith("]"):
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            return False
        return True
    return len(text) <= 253 and _HOSTNAME.match(text.lower()) is not None


def host_header(text: str) -> str:
    """A Host header value to send: `NAME` or `NAME:PORT`, as written."""
    name, port = text, ""
    if text.startswith("["):
        if "]:" in text:
            name, _, port = text.rpartition(":")
    elif ":" in text:
        name, _, port = text.rpartition(":")
    valid_port = not port or (port.isdigit() and 0 < int(port) < 65536)
    if not is_hostname(name) or not valid_port:
        raise Invalid("a host name such as example.com, with an optional :PORT", repr(text))
    return text


_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)


def status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """`200`, `200,204`, `200-399`, `2xx`: inclusive status ranges."""
    expected = "status codes from 100 to 599 such as 200, 200,204, 200-399 or 2xx"
    ranges: list[tuple[int, int]] = []
    for part in text.strip().split(","):
        klass = _STATUS_CLASS.match(part)
        if klass:
            low = int(klass.group(1)) * 100
            ranges.append((low, low + 99))
            continue
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise Invalid(expected, repr(part) if part else repr(text))
        low, high = int(first), int(last) if dash else int(first)
        if not 100 <= low <= high <= 599:
            raise Invalid(expected, repr(part))
        ranges.append((low, high))
    return tuple(ranges)


def status(low: int, high: int, what: str = "a status code") -> Callable[[str], int]:
    def parse(text: str) -> int:
        word = text.strip()
        if not word.isdigit() or not low <= int(word) <= high:
            raise Invalid(f"{what} from {low} to {high}", repr(word) if word else "nothing")
        return int(word)

    return parse


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(text: str) -> tuple[Network, ...]:
    """Addresses or CIDR networks, separated by white space or newlines."""
    result: list[Network] = []
    errors: list[Invalid] = []
    for index, line in each_line(text):
        for word in line.split():
            try:
                result.append(ipaddress.ip_network(word, strict=True))
            except ValueError as e:
                collect(
                    errors,
                    index,
                    Invalid("an IP address or network such as 10.0.0.0/8", f"{word!r} ({e})"),
                )
    raise_all(errors)
    return tuple(result)


def error_pages(text: str, base_dir: str) -> tuple[tuple[int, str], ...]:
    """Lines of `STATUS [STATUS...] FILE`; a relative FILE is relative to `base_dir` (the
    config file's directory). Every file must be readable now."""
    result: list[tuple[int, str]] = []
    seen: set[int] = set()
    errors: list[Invalid] = []
    parse_status = status(400, 599, "an error status")
    for index, line in each_line(text):
        try:
            parts = words(line, "an error page line")
            if len(parts) < 2:
                raise Invalid(
                    "STATUS [STATUS...] FILE such as '502 503 errors/5xx.html'", repr(line)
                )
            *codes, file = parts
            statuses = [parse_status(code) for code in codes]
            for code in statuses:
                if code in seen:
                    raise Invalid("each status once", f"{code} twice")
                seen.add(code)
            full = os.path.join(base_dir, file)
            try:
                with open(full, "rb"):
                    pass
            except OSError as e:
                raise Invalid("a readable file", f"{full!r} ({e.strerror or e})") from None
            result.extend((code, full) for code in statuses)
        except Invalid as e:
            collect(errors, index, e)
    raise_all(errors)
    if not result:
        raise Invalid("STATUS [STATUS...] FILE lines", "nothing")
    return tuple(result)
