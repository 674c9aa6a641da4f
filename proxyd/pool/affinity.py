"""What `balance = hash` keys on, decided by the pool from the facts a relay passes.

A relay says who is asking (`Affinity`: the client's address; for a SIP dialog its Call-ID;
for an HTTP request to a pool with `hash_key = uri` or `header NAME`, the request's key, made
by proxyd.relay.http.tier); the pool, which knows its own `balance`, makes the key
(`hash_key`) only when it hashes.
"""

from __future__ import annotations

import functools
import ipaddress

import attrs

from proxyd.config.model import Address

__all__ = ["Affinity", "client_hash_key", "hash_key"]


@attrs.frozen
class Affinity:
    """The facts a connection, session or query may be kept on one server by: the client's
    address, a dialog (a SIP Call-ID) that wins over it when there is one, and an HTTP
    request's own key (its URI, a field's value) that wins over both."""

    client: Address | None = None
    dialog: bytes | None = None
    request: bytes | None = None


def client_hash_key(address: Address | None) -> bytes | None:
    """The `balance = hash` key of a client: its IP address packed (IPv4-mapped IPv6 as IPv4),
    so that the same client gets the same key however it reached the listener."""
    if address is None:
        return None
    return _packed(address.host)


@functools.lru_cache(maxsize=4096)
def _packed(host: str) -> bytes:
    """Parsing an address takes a few microseconds: clients come back."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed


def hash_key(balance: str, affinity: Affinity | None) -> bytes | None:
    """The key a pool balancing by `balance` picks by for `affinity`: None unless it hashes;
    the request's key when there is one, else the dialog, else the client's packed address."""
    if balance != "hash" or affinity is None:
        return None
    if affinity.request is not None:
        return affinity.request
    if affinity.dialog is not None:
        return affinity.dialog
    return client_hash_key(affinity.client)
