"""The authoritative answers of a `[gslb NAME]`, without I/O (docs/gslb.md).

Zone.answer() takes a query's wire bytes, the client's address, the transport's size limit
and the healthy servers of the pools (a Healthy, proxyd.gslb.view) and returns the
answer's wire bytes with its rcode. dnspython reads and writes the wire format.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence
from typing import Final, Protocol

import attrs
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from proxyd.config.gslb_model import GslbConfig, Network

__all__ = ["UDP_MIN", "UDP_PAYLOAD", "Healthy", "Reply", "Zone"]

UDP_MIN: Final = 512
"""The UDP answer limit without EDNS (RFC 1035 4.2.1)."""
UDP_PAYLOAD: Final = 1232
"""The EDNS payload proxyd offers and the largest UDP answer it sends (DNS Flag Day 2020:
no IP fragmentation on common paths)."""
TCP_MAX: Final = 65535
_FAMILIES: Final = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}


class Healthy(Protocol):
    """The servers of a pool as the health service last published them."""

    def healthy(self, pool: str) -> Sequence[tuple[str, int]]:
        """(IP address, weight) of each server that may get traffic now: the available
        primaries, or the available backups when no primary is."""
        ...

    def families(self, pool: str) -> frozenset[int]:
        """The IP versions (4, 6) of the pool's configured servers, healthy or not."""
        ...


@attrs.frozen
class Reply:
    """What to send back (None: nothing, the datagram was no query) and its rcode's name
    (for the counters; None when nothing is sent)."""

    wire: bytes | None
    rcode: str | None
    truncated: bool = False


@attrs.frozen
class _Rule:
    pool: str
    networks: tuple[Network, ...]


class Zone:
    """The zone of one [gslb] section and how it answers."""

    def __init__(self, config: GslbConfig, serial: int, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.SystemRandom()
        self.apex = dns.name.from_text(config.zone)
        self.rules: dict[dns.name.Name, tuple[_Rule, ...]] = {}
        """Per name: the preferred pools by network (most specific first), then the default."""
        for record in config.records:
            name = dns.name.from_text(record.name, self.apex) if record.name else self.apex
            self.rules[name] = (*self.rules.get(name, ()), _Rule(record.pool, record.networks))
        for name, rules in self.rules.items():
            preferred = [rule for rule in rules if rule.networks]
            preferred.sort(key=lambda rule: -max(n.prefixlen for n in rule.networks))
            self.rules[name] = (*preferred, *(rule for rule in rules if not rule.networks))
        self.existing = set(self.rules) | {self.apex}
        """Names that exist: the apex, the records' names and the names between them (empty
        non-terminals, which answer NODATA rather than NXDOMAIN: RFC 8020)."""
        for name in list(self.rules):
            while name != self.apex and len(name) > len(self.apex):
                name = name.parent()
                self.existing.add(name)
        ttl = config.ttl
        mname = dns.name.from_text(config.ns_names[0])
        rname = dns.name.from_text("hostmaster", self.apex)
        self.soa = dns.rrset.from_text(
            self.apex,
            ttl,
            "IN",
            "SOA",
            f"{mname} {rname} {serial} 3600 600 604800 {ttl}",
        )
        """The SOA: its minimum (and TTL) is `ttl`, the negative answers' TTL (RFC 2308 5)."""
        self.ns = dns.rrset.from_text_list(
            self.apex, ttl, "IN", "NS", [f"{name}." for name in config.ns_names]
        )

    def answer(self, wire: bytes, client: str, limit: int, view: Healthy) -> Reply:
        """The answer to the query `wire` from `client` (its IP address) that fits in
        `limit` bytes (UDP_MIN or TCP_MAX: over UDP, the query's EDNS payload raises
        UDP_MIN up to UDP_PAYLOAD)."""
        if len(wire) < 12 or wire[2] & 0x80:
            return Reply(None, None)  # no header to answer with, or a response: never answer
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _header_only(wire, dns.rcode.FORMERR)
        if limit < TCP_MAX and query.edns >= 0:
            limit = min(max(query.payload, UDP_MIN), UDP_PAYLOAD)
        response = dns.message.make_response(query, our_payload=UDP_PAYLOAD)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 6.1.3
            return _render(response, limit)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return _render(response, limit)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return _render(response, limit)
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or not question.name.is_subdomain(self.apex):
            response.set_rcode(dns.rcode.REFUSED)
            return _render(response, limit)
        ecs = self._client_subnet(query)
        network: Network | None = None
        if ecs is not None:
            if ecs.srclen:
                network = ipaddress.ip_network(f"{ecs.address}/{ecs.srclen}", strict=False)
        else:
            network = _source_network(client)
        self._lookup(question.name, question.rdtype, network, response, view)
        if ecs is not None:
            scope = self._scope(question.name, network)
            response.use_edns(
                0, payload=UDP_PAYLOAD, options=[dns.edns.ECSOption(ecs.address, ecs.srclen, scope)]
            )
        return _render(response, limit)

    def _client_subnet(self, query: dns.message.Message) -> dns.edns.ECSOption | None:
        if not self.config.edns_client_subnet:
            return None
        for option in query.options:
            if isinstance(option, dns.edns.ECSOption):
                return option
        return None

    def _scope(self, name: dns.name.Name, network: Network | None) -> int:
        """RFC 7871 7.2.1: 0 for a name answered the same to everyone; else the client's own
        prefix, lengthened to the longest configured network inside it (the answer differs
        within the client's subnet beyond its source prefix)."""
        rules = self.rules.get(name, ())
        if network is None or not any(rule.networks for rule in rules):
            return 0
        scope = network.prefixlen
        for rule in rules:
            for configured in rule.networks:
                if configured.version == network.version and configured.subnet_of(network):  # type: ignore[arg-type]
                    scope = max(scope, configured.prefixlen)
        return scope

    def _lookup(
        self,
        name: dns.name.Name,
        rdtype: int,
        network: Network | None,
        response: dns.message.Message,
        view: Healthy,
    ) -> None:
        response.flags |= dns.flags.AA
        if name not in self.existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self.soa)
            return
        if name == self.apex and rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            response.answer.append(self.soa if rdtype == dns.rdatatype.SOA else self.ns)
            return
        rules = self.rules.get(name)
        rdtype = dns.rdatatype.RdataType.make(rdtype)
        family = _FAMILIES.get(rdtype)
        if rules is None or family is None:
            response.authority.append(self.soa)  # NODATA (RFC 2308 2.2)
            return
        chosen = [rule for rule in rules if _holds(rule, network)]
        configured = False
        for rule in chosen:
            servers = [s for s in view.healthy(rule.pool) if _version(s[0]) == family]
            configured = configured or family in view.families(rule.pool)
            if servers:
                addresses = self._weighted(servers)
                rrset = dns.rrset.from_text_list(name, self.config.ttl, "IN", rdtype, addresses)
                response.answer.append(rrset)
                return
        if configured:
            # Servers of this family exist and none is healthy: SERVFAIL, so that a resolver
            # asks the zone's other name servers and caches no negative answer (docs/gslb.md).
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        response.authority.append(self.soa)

    def _weighted(self, servers: Sequence[tuple[str, int]]) -> list[str]:
        """The addresses in an order drawn by weight (Efraimidis-Spirakis: each server comes
        first with a probability proportional to its weight), the first max_answers."""
        keyed = sorted(servers, key=lambda s: self.rng.random() ** (1.0 / s[1]), reverse=True)
        limit = self.config.max_answers or len(keyed)
        return [address for address, _ in keyed[:limit]]


def _holds(rule: _Rule, network: Network | None) -> bool:
    """A default rule holds every client; a preferred one those inside its networks."""
    if not rule.networks:
        return True
    if network is None:
        return False
    return any(
        configured.version == network.version and network.subnet_of(configured)  # type: ignore[arg-type]
        for configured in rule.networks
    )


def _source_network(client: str) -> Network | None:
    """The client's address as a one-address network; None when it is none (a test's
    transport, an IPv6 address with a zone index), which only the default pools hold."""
    try:
        return ipaddress.ip_network(client)
    except ValueError:
        return None


def _version(address: str) -> int:
    return 6 if ":" in address else 4


def _render(response: dns.message.Message, limit: int) -> Reply:
    """The response's wire form within `limit` bytes; one that does not fit is sent with its
    question alone and TC set (RFC 2181 9), so that the client asks again over TCP."""
    rcode = dns.rcode.to_text(response.rcode())
    try:
        # want_shuffle off: the weighted order is the one sent (dnspython shuffles by default).
        return Reply(response.to_wire(max_size=limit, want_shuffle=False), rcode)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return Reply(response.to_wire(max_size=limit), rcode, truncated=True)


def _header_only(wire: bytes, rcode: dns.rcode.Rcode) -> Reply:
    """An answer to a query that could not be parsed: its ID and opcode, no question."""
    (query_id, flags) = struct.unpack("!HH", wire[:4])
    response = dns.message.Message(id=query_id)
    response.flags = dns.flags.QR | (flags & dns.flags.RD)
    response.set_opcode(dns.opcode.from_flags(flags))
    response.set_rcode(rcode)
    return Reply(response.to_wire(), dns.rcode.to_text(rcode))
