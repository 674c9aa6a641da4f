"""Parsers for addresses: servers' `HOST:PORT`, listeners' Twisted endpoint strings (and
proxyd's own `udp:`), and the `servers` list of a pool. Each raises Invalid(expected, found,
hint)."""

from __future__ import annotations

import ipaddress

from twisted.internet.endpoints import serverFromString

from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.model import (
    Address,
    ServerConfig,
)
from proxyd.config.scalars import (
    integer,
)


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
