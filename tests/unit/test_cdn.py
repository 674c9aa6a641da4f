"""A tier of proxyd caches (docs/cdn.md): the request's key on the ring (hash_key = uri,
header NAME), how many keys move when a peer leaves, this node among its peers
(this_server, parent), CDN-Loop (RFC 8586), and the config's errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from proxyd.accesslog import AccessLog
from proxyd.cache.keys import KeyRule
from proxyd.config.load import loads
from proxyd.config.model import (
    Address,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RouteConfig,
    RouteMatch,
    ServerConfig,
)
from proxyd.filters.cdn_loop import hops
from proxyd.pool import Affinity, Pool, hash_key
from proxyd.pool.balance import ConsistentHash
from proxyd.pool.server import Server
from proxyd.relay.http.listener import HttpRelayFactory
from proxyd.relay.http.tier import request_key
from proxyd.relay.http.upstream import ConnectionPool
from tests.unit.test_config import errors_of

KEYS = 10_000
PEERS = [f"127.0.0.{i}:8080" for i in (2, 3, 4)]
SHIELD = "127.0.0.9:8081"


# The request's key.


def test_uri_key_is_the_cache_key_without_the_scheme() -> None:
    def key(scheme: str, host: str, query: str = "", rule: KeyRule | None = None) -> bytes | None:
        return request_key("uri", scheme, host, "/img/a.png", query, [], rule)

    assert key("http", "Example.TEST:80") == b"example.test/img/a.png"
    assert key("https", "example.test:443") == b"example.test/img/a.png"
    assert key("http", "example.test:8080", "b=2") == b"example.test:8080/img/a.png?b=2"
    rule = KeyRule(ignore_params=frozenset({"utm_*"}), sort_params=True)
    assert key("http", "example.test", "z=1&utm_source=x&a=2", rule) == (
        b"example.test/img/a.png?a=2&z=1"
    )


def test_header_key_is_the_fields_values_and_none_without_the_field() -> None:
    fields = [(b"X-Shard", b" tenant-7 "), (b"Accept", b"*/*")]
    assert request_key("header x-shard", "http", "h", "/", "", fields, None) == b"tenant-7"
    assert request_key("header x-shard", "http", "h", "/", "", [], None) is None
    assert request_key("client_ip", "http", "h", "/", "", fields, None) is None


def test_the_request_key_wins_over_the_client_address_only_for_hash() -> None:
    affinity = Affinity(Address("203.0.113.7", 1), request=b"example.test/a")
    assert hash_key("hash", affinity) == b"example.test/a"
    assert hash_key("hash", Affinity(Address("203.0.113.7", 1))) == bytes([203, 0, 113, 7])
    assert hash_key("round_robin", affinity) is None


# The ring: at most 1/N of the keys move when one of N peers leaves.


def ring_servers(n: int) -> list[Server]:
    return [
        Server(config=ServerConfig(Address(f"127.0.0.{i}", 8080)), pool="edges")
        for i in range(2, 2 + n)
    ]


def uri_keys(n: int) -> list[bytes]:
    return [b"example.test/object/%d?v=%d" % (i, i % 7) for i in range(n)]


@pytest.mark.parametrize("n", [3, 5, 10])
def test_a_peer_leaving_moves_only_its_own_keys_about_one_in_n(n: int) -> None:
    servers = ring_servers(n)
    ring = ConsistentHash(servers)
    before = {key: ring.pick(servers, key) for key in uri_keys(KEYS)}
    shares = Counter(before.values())
    # Each peer holds about 1/N (160 points a peer: a few % of spread).
    assert max(shares.values()) / KEYS < 1 / n + 0.05
    for gone in servers:
        left = [s for s in servers if s is not gone]
        after = {key: ring.pick(left, key) for key in before}
        moved = [key for key in before if after[key] is not before[key]]
        # Only the keys of the peer that left move, and no more than 1/N (+ tolerance).
        assert all(before[key] is gone for key in moved)
        assert len(moved) == shares[gone]
        assert len(moved) / KEYS <= 1 / n + 0.05
        # And they come back to it, alone, when it returns.
        again = {key: ring.pick(servers, key) for key in before}
        assert again == before


def test_the_pool_owns_about_one_in_n_and_never_picks_this_node() -> None:
    pool = edge_pool()
    this = pool.this_server
    assert this is not None and pool.tier
    owned = 0
    for key in uri_keys(3000):
        affinity = Affinity(request=key)
        picked = pool.pick(affinity=affinity)
        assert picked is not None and picked is not this
        owned += pool.owns(affinity)
    assert 0.28 < owned / 3000 < 0.39


def test_keys_of_a_peer_that_is_down_move_to_the_others_including_this_node() -> None:
    pool = edge_pool()
    peer = pool.servers[1]
    affinities = [Affinity(request=key) for key in uri_keys(3000)]
    owned_before = {a for a in affinities if pool.owns(a)}
    on_peer = {a for a in affinities if not pool.owns(a) and pool.pick(affinity=a) is peer}
    pool.set_health(peer, False, "check failed")
    owned_after = {a for a in affinities if pool.owns(a)}
    assert owned_before <= owned_after
    assert owned_after - owned_before <= on_peer
    for affinity in affinities:
        assert pool.owns(affinity) or pool.pick(affinity=affinity) not in (peer, None)


def edge_pool(**keys: Any) -> Pool:
    return Pool(edge_pool_config(**keys), MemoryReactorClock())


def edge_pool_config(**keys: Any) -> PoolConfig:
    settings: dict[str, Any] = {
        "balance": "hash",
        "hash_key": "uri",
        "this_server": PEERS[0],
        "parent": "shield",
    }
    settings.update(keys)
    return PoolConfig(
        name="edges",
        servers=tuple(ServerConfig(address(text)) for text in PEERS),
        **settings,
    )


def address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host, int(port))


# Through the relay: to a peer, or to the parent.


class _Log:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, line: str) -> int:
        self.records.append(json.loads(line))
        return len(line)

    def flush(self) -> None:
        pass


class Edge:
    """An edge node's listener: route / to pool `edges` (three peers, this node the first),
    whose parent is pool `shield`."""

    def __init__(
        self, cdn_loop: str | None = "edge", cdn_loop_max: int = 1, **pool_keys: Any
    ) -> None:
        self.reactor = MemoryReactorClock()
        edges = edge_pool_config(**pool_keys)
        shield = PoolConfig(name="shield", servers=(ServerConfig(address(SHIELD)),))
        self.pools = {"edges": Pool(edges, self.reactor), "shield": Pool(shield, self.reactor)}
        upstreams = {name: ConnectionPool(self.reactor, p.config) for name, p in self.pools.items()}
        route = RouteConfig(name="all", match=RouteMatch(path="/"), action=ProxyAction("edges"))
        self.config = HttpListenerConfig(
            name="edge",
            listen="tcp:0",
            routes=(route,),
            cdn_loop=cdn_loop,
            cdn_loop_max=cdn_loop_max,
        )
        self.log = _Log()
        self.factory = HttpRelayFactory(
            self.reactor, self.config, self.pools, upstreams, AccessLog(self.log, "test"), {}, None
        )
        self.used = 0

    def get(self, path: str, *fields: str) -> tuple[str, bytes]:
        """Send GET `path` on a new connection; (where the relay connects, the request it
        sends there), or ("", what the client got) when it answered itself."""
        client = self.factory.buildProtocol(None)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.2", 8080),
            peerAddress=IPv4Address("TCP", "10.0.0.7", 40000),
        )
        client.makeConnection(transport)
        extra = "".join(f"{f}\r\n" for f in fields)
        client.dataReceived(f"GET {path} HTTP/1.1\r\nHost: example.test\r\n{extra}\r\n".encode())
        if len(self.reactor.tcpClients) == self.used:
            return "", transport.value()
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.used]
        self.used += 1
        upstream = factory.buildProtocol(None)
        ut = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        upstream.makeConnection(ut)
        return f"{host}:{port}", ut.value()


def test_each_url_goes_to_its_peer_or_to_the_parent_when_this_node_owns_it() -> None:
    edge = Edge()
    pool = edge.pools["edges"]
    where: Counter[str] = Counter()
    for i in range(300):
        path = f"/object/{i}"
        target, sent = edge.get(path)
        owns = pool.owns(Affinity(request=b"example.test" + path.encode()))
        assert (target == SHIELD) == owns
        assert target != PEERS[0]
        assert b"\r\nCDN-Loop: edge\r\n" in sent
        where[target] += 1
    assert set(where) == {SHIELD, PEERS[1], PEERS[2]}
    assert all(60 < count < 140 for count in where.values())
    # The same URL goes to the same place every time.
    assert edge.get("/object/7")[0] == edge.get("/object/7")[0]


def test_a_request_from_a_peer_goes_to_the_parent_whoever_owns_it() -> None:
    edge = Edge()
    for i in range(50):
        target, sent = edge.get(f"/object/{i}", "CDN-Loop: edge")
        assert target == SHIELD
        assert sent.count(b"edge") == 2  # its own CDN-Loop member kept, this node's added


def test_a_request_that_carries_the_pseudonym_twice_is_refused_508() -> None:
    edge = Edge()
    target, answer = edge.get("/a", "CDN-Loop: other, edge;p=1", "CDN-Loop: Edge")
    assert target == ""
    assert answer.startswith(b"HTTP/1.1 508 Loop Detected\r\n")
    assert "loop" in edge.log.records[-1]["error"]


def test_other_cdns_members_do_not_count() -> None:
    assert hops([(b"CDN-Loop", b"foo, bar;x=1, edge ; a=b"), (b"Via", b"edge")], b"edge") == 1
    assert hops([(b"cdn-loop", b"EDGE, edge:8080")], b"edge") == 1
    assert hops([], b"edge") == 0


def test_without_cdn_loop_no_field_is_added_and_the_ring_alone_decides() -> None:
    edge = Edge(cdn_loop=None)
    targets = {edge.get(f"/object/{i}", "CDN-Loop: edge")[0] for i in range(30)}
    assert targets == {SHIELD, PEERS[1], PEERS[2]}
    assert b"CDN-Loop" not in edge.get("/a")[1]


def test_when_a_peer_is_down_its_urls_go_to_the_other_peers_or_the_parent() -> None:
    edge = Edge()
    peers = edge.pools["edges"].servers
    before = {i: edge.get(f"/object/{i}")[0] for i in range(200)}
    edge.pools["edges"].set_health(peers[1], False, "check failed")
    after = {i: edge.get(f"/object/{i}")[0] for i in range(200)}
    moved = [i for i in before if before[i] != after[i]]
    assert moved and all(before[i] == PEERS[1] for i in moved)
    assert PEERS[1] not in after.values()


def test_a_pool_hashing_by_client_ip_computes_no_request_key() -> None:
    pool = Pool(
        PoolConfig(name="web", servers=(ServerConfig(Address("127.0.0.1", 1)),), balance="hash"),
        MemoryReactorClock(),
    )
    assert not pool.tier and pool.this_server is None
    assert not pool.owns(Affinity(request=b"x"))


def test_the_ring_gives_random_keys_to_all_peers() -> None:
    pool = edge_pool(this_server=None, parent=None)
    rng = random.Random(1)
    picked = Counter(pool.pick(affinity=Affinity(request=rng.randbytes(8))) for _ in range(3000))
    assert set(picked) == set(pool.servers)


# Configuration.

POOLS = """
[pool edges]
balance = hash
hash_key = uri
servers = 127.0.0.2:8080 127.0.0.3:8080 127.0.0.4:8080
{extra}

[pool shield]
servers = 127.0.0.9:8081

[http edge]
listen = tcp:8080:interface=127.0.0.2
{listener}
routes =
    path / -> pool edges
"""


def config_text(extra: str = "", listener: str = "") -> str:
    return POOLS.format(extra=extra, listener=listener)


def test_a_tier_config_loads() -> None:
    text = config_text("this_server = 127.0.0.2:8080\nparent = shield", "cdn_loop = edge")
    config = loads(text, "proxyd.ini")
    edges = config.pools["edges"]
    assert (edges.hash_key, edges.this_server, edges.parent) == ("uri", "127.0.0.2:8080", "shield")
    assert config.http[0].cdn_loop == "edge"
    header = loads(config_text("hash_key = header X-Shard").replace("hash_key = uri\n", ""))
    assert header.pools["edges"].hash_key == "header x-shard"


@pytest.mark.parametrize(
    ("extra", "listener", "message"),
    [
        (
            "this_server = 127.0.0.5:8080\nparent = shield",
            "",
            "proxyd.ini:6: [pool edges] this_server: expected one of the pool's servers "
            "(127.0.0.2:8080, 127.0.0.3:8080, 127.0.0.4:8080); found '127.0.0.5:8080'",
        ),
        (
            "this_server = 127.0.0.2:8080",
            "",
            "proxyd.ini:6: [pool edges] this_server: expected a 'parent' pool with this_server",
        ),
        (
            "parent = shield",
            "",
            "proxyd.ini:6: [pool edges] parent: expected this_server with parent",
        ),
        (
            "this_server = 127.0.0.2:8080\nparent = edges",
            "",
            "proxyd.ini:7: [pool edges] parent: expected another pool; found the pool itself",
        ),
        (
            "this_server = 127.0.0.2:8080\nparent = sheild",
            "",
            "proxyd.ini:7: [pool edges] parent: expected the name of a [pool]",
        ),
        (
            "",
            "cdn_loop = a b",
            "proxyd.ini:13: [http edge] cdn_loop: expected a CDN-Loop pseudonym",
        ),
    ],
)
def test_tier_config_errors_name_file_line_section_and_key(
    extra: str, listener: str, message: str
) -> None:
    errors = errors_of(config_text(extra, listener))
    assert len(errors) == 1
    assert errors[0].startswith(message), errors[0]


def test_this_server_needs_balance_hash() -> None:
    text = config_text("this_server = 127.0.0.2:8080\nparent = shield").replace(
        "balance = hash", "balance = round_robin"
    )
    [error] = errors_of(text)
    assert error.startswith("proxyd.ini:6: [pool edges] this_server: expected balance = hash")


@pytest.mark.parametrize(
    ("value", "found"),
    [("url", "found 'url' (did you mean 'uri'?)"), ("header", "found 'header'")],
)
def test_bad_hash_keys_say_what_is_expected(value: str, found: str) -> None:
    [error] = errors_of(config_text().replace("hash_key = uri", f"hash_key = {value}"))
    assert error.startswith(
        "proxyd.ini:4: [pool edges] hash_key: expected 'client_ip', 'uri' or 'header NAME'; "
        + found
    ), error


def test_cdn_loop_max_lets_a_request_through_more_tiers_of_one_pseudonym() -> None:
    edge = Edge(cdn_loop="cdn", cdn_loop_max=2)
    assert edge.get("/a", "CDN-Loop: cdn, cdn")[0] == SHIELD
    target, answer = edge.get("/a", "CDN-Loop: cdn, cdn, cdn")
    assert target == "" and answer.startswith(b"HTTP/1.1 508 ")


def test_cdn_loop_max_needs_cdn_loop() -> None:
    [error] = errors_of(config_text(listener="cdn_loop_max = 2"))
    assert error.startswith("proxyd.ini:13: [http edge] cdn_loop_max: expected cdn_loop with")


def test_a_tcp_listener_may_not_use_a_pool_with_this_server() -> None:
    text = config_text("this_server = 127.0.0.2:8080\nparent = shield") + (
        "\n[tcp raw]\nlisten = tcp:9000\npool = edges\n"
    )
    [error] = errors_of(text)
    assert error.startswith("proxyd.ini:20: [tcp raw] pool: expected a pool without this_server"), (
        error
    )
