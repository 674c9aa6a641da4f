"""A pool's service discovery keys: `discovery` (srv NAME | etcd URL PREFIX), `resolver`
and `max_discovered`, grouped into a DiscoveryConfig (proxyd.config.discovery_model) by the
pool's cross-checks."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from proxyd.config.discovery_model import (
    DEFAULT_MAX_DISCOVERED,
    DISCOVERY_KINDS,
    DiscoveryConfig,
)
from proxyd.config.endpoints import address
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.http_values import is_hostname
from proxyd.config.ini import Section
from proxyd.config.keys import Key
from proxyd.config.scalars import integer

MAX_DISCOVERED = 4096
"""The largest `max_discovered`: each server costs a health-check loop and a balancer entry."""


def discovery(text: str) -> tuple[str, str, str]:
    """`srv NAME` or `etcd http://HOST:PORT PREFIX`: (kind, name or prefix, endpoint)."""
    parts = text.split()
    expected = "'srv NAME' or 'etcd http://HOST:PORT PREFIX'"
    if not parts:
        raise Invalid(expected, "nothing")
    kind = parts[0].lower()
    if kind not in DISCOVERY_KINDS:
        raise Invalid(
            f"a discovery kind ({one_of(DISCOVERY_KINDS)})",
            repr(parts[0]),
            did_you_mean(kind, DISCOVERY_KINDS),
        )
    if kind == "srv":
        if len(parts) != 2:
            raise Invalid("'srv NAME', e.g. srv _http._tcp.api.example.test", repr(text.strip()))
        name = parts[1].rstrip(".")
        if not is_hostname(name.replace("_", "x")):
            raise Invalid("a DNS name such as _http._tcp.api.example.test", repr(parts[1]))
        return kind, name, ""
    if len(parts) != 3:
        example = "etcd http://127.0.0.1:2379 /proxyd/api/"
        raise Invalid(f"'etcd http://HOST:PORT PREFIX', e.g. {example}", repr(text.strip()))
    url = urlsplit(parts[1])
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise Invalid("an etcd client URL http://HOST:PORT", repr(parts[1]))
    try:
        url.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise Invalid("an etcd client URL http://HOST:PORT", repr(parts[1])) from None
    return kind, parts[2], parts[1].rstrip("/")


def resolver(text: str) -> tuple[str, int]:
    """A DNS server `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 by default)."""
    text = text.strip()
    try:
        return (str(ipaddress.ip_address(text.strip("[]"))), 53)
    except ValueError:
        pass
    found = address(text)
    try:
        ipaddress.ip_address(found.host)
    except ValueError:
        raise Invalid("a resolver's IP address, e.g. 127.0.0.1:53", repr(text)) from None
    return (found.host, found.port)


KEYS: dict[str, Key] = {
    "discovery": Key(discovery, group="discovery"),
    "resolver": Key(resolver, group="discovery"),
    "max_discovered": Key(integer(1, MAX_DISCOVERED), group="discovery"),
}
"""The [pool] keys of service discovery."""


def discovery_group(
    section: Section, fields: dict[str, Any], values: dict[str, Any]
) -> list[tuple[str | None, Invalid]]:
    """Build the pool's `discovery` from its keys; a pool needs `servers` or `discovery`."""
    problems: list[tuple[str | None, Invalid]] = []
    found = values.get("discovery")
    if found is None:
        for key in ("resolver", "max_discovered"):
            if key in values:
                problems.append((key, Invalid(f"'{key}' only with 'discovery'", "no discovery")))
        if "servers" not in fields:
            problems.append(("servers", Invalid("a 'servers' key or a 'discovery' key", "none")))
        return problems
    kind, name, endpoint = found
    if "resolver" in values and kind != "srv":
        problems.append(("resolver", Invalid("'resolver' only with discovery = srv", kind)))
    fields.setdefault("servers", ())
    fields["discovery"] = DiscoveryConfig(
        kind=kind,
        name=name,
        endpoint=endpoint,
        resolver=values.get("resolver"),
        max_servers=values.get("max_discovered", DEFAULT_MAX_DISCOVERED),
    )
    return problems
