"""The keys of a tier of proxyd caches (docs/cdn.md): what a pool hashes on (`hash_key`),
which of its servers is this node (`this_server`) and where the requests this node owns go
(`parent`), and the listener's `cdn_loop` pseudonym (RFC 8586). Each parser raises
Invalid(expected, found, hint); pool_tier_problems checks what spans the pool's keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from proxyd.config.endpoints import address
from proxyd.config.errors import ConfigError, Invalid, did_you_mean
from proxyd.config.http_values import TCHAR
from proxyd.config.ini import Section
from proxyd.config.model import PoolConfig

HASH_KEYS: Final = ("client_ip", "uri", "header NAME")
"""What `hash_key` accepts; `header NAME` is kept as `header name` (the name in lower case)."""

_HEADER_NAME = re.compile(rf"^{TCHAR}+$")
_CDN_ID = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=-]+(:[0-9]{1,5})?$")
"""RFC 8586 2: cdn-id = ( uri-host [ ":" port ] ) / pseudonym; a pseudonym is a token, a
uri-host a reg-name or an IPv4 address (an IPv6 literal is left out: it needs brackets)."""


def hash_key(text: str) -> str:
    """`client_ip`, `uri`, or `header NAME` (kept as `header name`, lower case)."""
    words = text.split()
    expected = "'client_ip', 'uri' or 'header NAME'"
    if len(words) == 1 and words[0] in ("client_ip", "uri"):
        return words[0]
    if len(words) == 2 and words[0] == "header":
        if not _HEADER_NAME.match(words[1]):
            raise Invalid("'header NAME' with NAME a header field name", repr(words[1]))
        return f"header {words[1].lower()}"
    found = repr(text.strip()) if text.strip() else "nothing"
    hint = did_you_mean(words[0], ("client_ip", "uri", "header")) if words else None
    if words == ["header"]:
        hint = "name the field: header X-Shard"
    raise Invalid(expected, found, hint)


def this_server(text: str) -> str:
    """One server of the pool's `servers`, by address, as the server list writes it."""
    return str(address(text))


def cdn_loop(text: str) -> str:
    """The pseudonym this node adds to CDN-Loop: a token or a host[:port] (RFC 8586 2)."""
    word = text.strip()
    if not _CDN_ID.match(word):
        raise Invalid(
            "a CDN-Loop pseudonym (letters, digits and -._~!$&'()*+,;=, a port after ':')",
            repr(word) if word else "nothing",
        )
    return word


def pool_tier_problems(name: str, fields: dict[str, Any]) -> list[tuple[str, Invalid]]:
    """(key, problem) for a [pool]'s tier keys across each other: this_server is one of its
    servers, it comes with a parent (another pool), and both only with balance = hash."""
    problems: list[tuple[str, Invalid]] = []
    this = fields.get("this_server")
    parent = fields.get("parent")
    balance = fields.get("balance", "round_robin")
    servers = fields.get("servers", ())
    if this is not None:
        names = [server.name for server in servers]
        if this not in names:
            listed = ", ".join(names) or "none"
            why = f"one of the pool's servers ({listed})"
            problems.append(("this_server", Invalid(why, repr(this), did_you_mean(this, names))))
        elif balance != "hash":
            why = "balance = hash with this_server (the ring says which requests are this node's)"
            problems.append(("this_server", Invalid(why, f"balance = {balance}")))
        if parent is None:
            why = "a 'parent' pool with this_server (where the requests this node owns go)"
            problems.append(("this_server", Invalid(why, "none")))
    if parent is not None:
        if this is None:
            why = "this_server with parent (the parent takes the requests this node owns)"
            problems.append(("parent", Invalid(why, "no this_server")))
        elif parent == name:
            problems.append(("parent", Invalid("another pool", f"the pool itself ({name!r})")))
    return problems


def listener_pool_errors(
    path: str, listener: Any, pools: Mapping[str, PoolConfig], section: Section
) -> list[ConfigError]:
    """A [tcp], [udp] or [websocket] listener's pool has no this_server: only the HTTP relay
    sends this node's requests to the parent; the others would pick among the peers."""
    name = getattr(listener, "pool", None)
    pool = pools.get(name) if isinstance(name, str) else None
    entry = section.entries.get("pool")
    if pool is None or pool.this_server is None or entry is None:
        return []
    expected = (
        "a pool without this_server (only HTTP routes send this node's requests to the parent)"
    )
    found = f"pool {name} (this_server = {pool.this_server})"
    return [ConfigError(path, entry.line, section.title, "pool", expected, found)]
