"""`[gslb NAME]` sections (docs/gslb.md): their parsers, the section's check across keys
(proxyd.config.cross_checks) and the check of the pools they name against those pools
(proxyd.config.load)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final

import attrs

from proxyd.config import values as v
from proxyd.config.errors import ConfigError, Invalid
from proxyd.config.gslb_model import GslbConfig, GslbRecord, Network
from proxyd.config.ini import Section
from proxyd.config.keys import Context, Key, reference
from proxyd.config.model import PoolConfig
from proxyd.config.security import Problems

MAX_TTL: Final = 86400
_RECORD = "NAME -> pool POOL [from NETWORK ...], NAME relative to the zone or @ for its apex"


def _domain(word: str, what: str) -> str:
    name = word.lower().rstrip(".")
    if not v.is_hostname(name) or "." not in name:
        raise Invalid(what, repr(word))
    return name


def zone(text: str) -> str:
    """`zone`: the apex of the zone answered for, such as gslb.example.com."""
    return _domain(text.strip(), "a DNS zone such as gslb.example.com")


def nameservers(text: str) -> tuple[str, ...]:
    found: list[str] = []
    for word in v.words(text, "name server names"):
        name = _domain(word, "name server names such as ns1.example.com")
        if name not in found:
            found.append(name)
    if not found:
        raise Invalid("one or more name server names", "nothing")
    return tuple(found)


def ttl(text: str) -> int:
    """`ttl`: a duration in whole seconds, from 1 s to a day."""
    seconds = v.positive_duration(text)
    if seconds != int(seconds) or not 1 <= seconds <= MAX_TTL:
        raise Invalid("a duration in whole seconds from 1s to 1d", repr(text.strip()))
    return int(seconds)


def _record_name(word: str) -> str:
    """A record's name relative to the zone ("" for @); an absolute one (ending in a dot)
    is made relative in gslb_section(), which knows the zone."""
    if word == "@":
        return ""
    bare = word.lower().rstrip(".")
    if not v.is_hostname(bare) or "*" in bare:
        raise Invalid(_RECORD, repr(word))
    return word.lower() if word.endswith(".") else bare


def records(text: str, ctx: Context) -> tuple[GslbRecord, ...]:
    """`records`: one `NAME -> pool POOL [from NETWORK ...]` a line."""
    found: list[GslbRecord] = []
    errors: list[Invalid] = []
    for index, line in v.each_line(text):
        try:
            parts = v.words(line, "a record")
            if not parts:
                continue
            if len(parts) < 4 or parts[1] != "->" or parts[2] != "pool":
                raise Invalid(_RECORD, repr(line.strip()))
            name = _record_name(parts[0])
            pool = reference("pool", parts[3], ctx.pools)
            networks: list[Network] = []
            if len(parts) > 4:
                if parts[4] != "from" or len(parts) == 5:
                    raise Invalid(_RECORD, repr(line.strip()))
                for word in parts[5:]:
                    try:
                        networks.append(ipaddress.ip_network(word, strict=True))
                    except ValueError as e:
                        raise Invalid(
                            "an IP address or network such as 10.0.0.0/8", f"{word!r} ({e})"
                        ) from None
            for other in found:
                if (
                    other.name == name
                    and other.pool == pool
                    and bool(other.networks) == bool(networks)
                ):
                    raise Invalid("each name and pool once", repr(line.strip()))
            found.append(GslbRecord(name, pool, tuple(networks), index))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not found:
        raise Invalid(_RECORD + ", one a line", "nothing")
    return tuple(found)


def gslb_section(section: Section, fields: dict[str, Any]) -> Problems:
    """Absolute record names inside the zone, made relative; every name has one line
    without `from` (the pool of every other client, and of the fallback)."""
    if "zone" not in fields or "records" not in fields:
        return []
    apex = fields["zone"]
    fixed: list[GslbRecord] = []
    problems: Problems = []
    for record in fields["records"]:
        name = record.name
        if name.endswith("."):
            bare = name.rstrip(".")
            if bare == apex:
                name = ""
            elif bare.endswith("." + apex):
                name = bare[: -len(apex) - 1]
            else:
                why = f"a name in the zone {apex}"
                problems.append(("records", Invalid(why, repr(name), value_line=record.line)))
                continue
        fixed.append(attrs.evolve(record, name=name))
    for name in dict.fromkeys(record.name for record in fixed):
        lines = [record for record in fixed if record.name == name]
        defaults = [record for record in lines if not record.networks]
        if len(defaults) != 1:
            shown = name or "@"
            problems.append(
                (
                    "records",
                    Invalid(
                        f"one line for {shown!r} without 'from' (its default pool)",
                        f"{len(defaults)}",
                        value_line=lines[0].line,
                    ),
                )
            )
    fields["records"] = tuple(fixed)
    return problems


def pool_errors(
    path: str, config: GslbConfig, pools: Mapping[str, PoolConfig], section: Section
) -> list[ConfigError]:
    """The servers of the pools a [gslb] names are answered as A and AAAA records: each
    must be an IP address, not a host name."""
    errors = []
    entry = section.entries["records"]
    for record in config.records:
        pool = pools.get(record.pool)
        if pool is None:
            continue
        for server in pool.servers:
            try:
                ipaddress.ip_address(server.address.host)
            except ValueError:
                errors.append(
                    ConfigError(
                        path,
                        entry.line_of(record.line),
                        section.title,
                        "records",
                        f"a pool whose servers are IP addresses (pool {record.pool} answers"
                        " A and AAAA queries)",
                        repr(server.name),
                    )
                )
                break
    return errors


KEYS: Mapping[str, Key] = {
    "listen": Key(v.udp_endpoint, required=True),
    "zone": Key(zone, required=True),
    "records": Key(records, required=True, context=True),
    "ttl": Key(ttl),
    "nameservers": Key(nameservers),
    "max_answers": Key(v.integer(0, 64)),
    "edns_client_subnet": Key(v.boolean),
    "max_connections": Key(v.integer(1, 100000)),
    "idle_timeout": Key(v.positive_duration),
    "max_queries_per_connection": Key(v.integer(1, 1000000)),
}
"""The keys of a [gslb NAME] section."""

SCHEMA = (GslbConfig, True, KEYS)
